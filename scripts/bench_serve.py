#!/usr/bin/env python3
"""Benchmark `python -m zer02llm.serve`: requests/s and time to first token at 1 and 8 concurrent clients.

It starts the server on a checkpoint (or talks to one already running, --url), warms it up with one
request, then for each concurrency C runs --requests streamed chat completions from C client threads
(each thread sends its next request when the last one finished). It prints figures; it asserts none.

    requests/s    = requests / wall seconds of the whole level
    TTFT          = seconds from sending the request to the first chunk carrying reply text (median, p90)
    tokens/s      = completion tokens (from usage) / wall seconds, all clients together

Greedy (temperature 0) over a fixed list of prompts, so two runs send the same work.

    python scripts/bench_serve.py --checkpoint outputs/<date>/<time>            # starts the server
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --concurrency 1 8 --json bench_serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx

PROMPTS = ["你好", "What colour is a frog?", "一加一等于几？", "Tell me a story.", "Hi", "星期三，天气很好",
           "Why is the sky blue?", "小明有三个苹果"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "zer02llm.serve", f"checkpoint={args.checkpoint}", f"port={port}",
               f"slots={args.slots}", f"threads={args.threads}", "log_level=warning"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited {proc.returncode}:\n{proc.stderr.read()}")
        try:
            httpx.get(url + "/v1/models", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not answer within 120 s")


def one_request(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first reply text, seconds in all, completion tokens) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return (first if first is not None else total), total, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    results: list[tuple[float, float, int]] = []
    lock, next_index = threading.Lock(), [0]

    def client_loop() -> None:
        with httpx.Client() as client:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= requests:
                    return
                result = one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttft = [r[0] for r in results]
    return {"concurrency": concurrency, "requests": len(results), "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 2),
            "ttft_median_ms": round(1000 * statistics.median(ttft), 1),
            "ttft_p90_ms": round(1000 * percentile(ttft, 0.9), 1),
            "latency_median_ms": round(1000 * statistics.median(r[1] for r in results), 1),
            "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
            "mean_completion_tokens": round(sum(r[2] for r in results) / len(results), 1)}


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", help="start `python -m zer02llm.serve` on this checkpoint or run directory")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="the model name to request (default: the first of /v1/models)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads per level")
    parser.add_argument("--requests", type=int, default=24, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=2, help="slots= of a server this script starts")
    parser.add_argument("--threads", type=int, default=1, help="threads= of a server this script starts")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1:
        parser.error("--concurrency, --requests and --max-tokens must be >= 1")

    proc, url = start_server(args) if args.checkpoint else (None, args.url.rstrip("/"))
    try:
        model = args.model or httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        with httpx.Client() as client:
            one_request(client, url, model, PROMPTS[0], args.max_tokens)  # warm-up, untimed
        levels = [run_level(url, model, c, args.requests, args.max_tokens) for c in args.concurrency]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    setup = (f"server slots={args.slots} threads={args.threads}, " if proc is not None else f"server {url}, ") + \
        f"model {model}, {args.requests} streamed chat requests per level, max_tokens={args.max_tokens}, greedy, " \
        f"{os.cpu_count()} CPU cores"
    print(setup)
    print(f"{'clients':>7} | {'req/s':>6} | {'TTFT median ms':>14} | {'TTFT p90 ms':>11} | "
          f"{'latency median ms':>17} | {'tokens/s':>8} | {'tokens/req':>10}")
    for r in levels:
        print(f"{r['concurrency']:>7} | {r['requests_per_s']:>6} | {r['ttft_median_ms']:>14} | {r['ttft_p90_ms']:>11} | "
              f"{r['latency_median_ms']:>17} | {r['tokens_per_s']:>8} | {r['mean_completion_tokens']:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "levels": levels}, indent=2) + "\n")
    return levels


if __name__ == "__main__":
    main()
