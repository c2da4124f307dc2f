#!/usr/bin/env python3
"""Benchmark `python -m zer02llm.serve`: output tokens/s and time to first token at 1 to 32 concurrent clients.

It starts the server on a checkpoint (or talks to one already running, --url), warms it up with one
request, then for each concurrency C runs --requests streamed chat completions from C client threads
(each thread sends its next request when the last one finished). It prints figures; it asserts none.
Servers to compare run one after the other on the same requests (never at once: they would share the cores):

    --compare-ref REF      today's server as of git REF (e.g. the slot server before the engine), from `git archive`
    --peer-transformers    transformers' own OpenAI server (`transformers serve --continuous-batching`) on the
                           checkpoint exported with zer02llm.export
    --make-checkpoint DIR  a randomly initialised 26M-shape checkpoint (dim 512, 8 layers) written to DIR first

    requests/s    = requests / wall seconds of the whole level
    TTFT          = seconds from sending the request to the first chunk carrying reply text (median, p90)
    tokens/s      = completion tokens (from usage) / wall seconds, all clients together

Greedy (temperature 0) over a fixed list of prompts, so two runs send the same work.

    python scripts/bench_serve.py --checkpoint outputs/<date>/<time>            # starts the server
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --concurrency 1 8 --json bench_serve.json
    python scripts/bench_serve.py --make-checkpoint /tmp/m26 --compare-ref <commit> --peer-transformers
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
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


REPO = Path(__file__).resolve().parent.parent


def start_server(args: argparse.Namespace, source: Optional[Path] = None, extra: Optional[list[str]] = None,
                 command: Optional[list[str]] = None, port: Optional[int] = None) -> tuple[subprocess.Popen, str]:
    """`python -m zer02llm.serve` of this tree (or of the tree at `source`), or `command` (a peer's server)."""
    port = port or free_port()
    env = dict(os.environ)
    if command is None:
        command = [sys.executable, "-m", "zer02llm.serve", f"checkpoint={Path(args.checkpoint).resolve()}",
                   f"port={port}", f"threads={args.threads}", "log_level=warning", *(extra or [])]
        env["PYTHONPATH"] = str(source or REPO)
    else:  # a peer: torch's threads as ours (--threads)
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=source or REPO, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server ({' '.join(command[:4])} ...) exited {proc.returncode}:\n{proc.stderr.read()}")
        try:
            httpx.get(url + "/v1/models", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not answer within 300 s")


def make_checkpoint(directory: Path) -> Path:
    """A randomly initialised checkpoint of the 26M shape (dim 512, 8 layers, the shipped tokenizer), once."""
    if (directory / "model.safetensors").is_file():
        return directory
    import dataclasses

    import torch

    from zer02llm.checkpoint import export_model
    from zer02llm.config import ModelConfig
    from zer02llm.model import Transformer
    from zer02llm.resources import shipped_path

    torch.manual_seed(0)
    cfg = ModelConfig(dim=512, n_layers=8, max_seq_len=2048)
    model = Transformer(cfg)
    config = {"model": dataclasses.asdict(cfg), "mode": "sft", "config": {"data": {"seq_len": 512}}}
    return export_model(directory, model, config, shipped_path("tokenizer"))


def source_tree(ref: str) -> Path:
    """The repository's files at git `ref` in a temporary directory (removed at exit)."""
    where = Path(tempfile.mkdtemp(prefix="bench-serve-ref-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def start_peer(args: argparse.Namespace) -> tuple[subprocess.Popen, str, str]:
    """transformers serve with its continuous batching, on the CPU, over the exported checkpoint."""
    exported = Path(tempfile.mkdtemp(prefix="bench-serve-export-")) / "model"
    subprocess.run([sys.executable, "-m", "zer02llm.export", f"checkpoint={Path(args.checkpoint).resolve()}",
                    f"output={exported}"], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   stdout=subprocess.DEVNULL)
    port = free_port()
    binary = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    proc, url = start_server(args, command=[binary, "serve", str(exported), "--continuous-batching", "--device", "cpu",
                                            "--port", str(port), "--host", "127.0.0.1"], port=port)
    return proc, url, str(exported)


def one_request(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first reply text, seconds in all, completion tokens) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens, pieces = time.perf_counter(), None, 0, 0
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
            else:
                pieces += sum(1 for c in chunk["choices"] if (c.get("delta") or {}).get("content"))
    total = time.perf_counter() - started
    # a server that does not report usage: one token per content chunk (each of ours carries one or fewer)
    return (first if first is not None else total), total, tokens or pieces


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


def measure(url: str, model: Optional[str], args: argparse.Namespace) -> tuple[str, list[dict]]:
    model = model or httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    with httpx.Client() as client:
        for _ in range(2):  # warm-up, untimed
            one_request(client, url, model, PROMPTS[0], args.max_tokens)
    return model, [run_level(url, model, c, args.requests, args.max_tokens) for c in args.concurrency]


def print_levels(title: str, levels: list[dict]) -> None:
    print(title)
    print(f"{'clients':>7} | {'req/s':>6} | {'TTFT median ms':>14} | {'TTFT p90 ms':>11} | "
          f"{'latency median ms':>17} | {'tokens/s':>8} | {'tokens/req':>10}")
    for r in levels:
        print(f"{r['concurrency']:>7} | {r['requests_per_s']:>6} | {r['ttft_median_ms']:>14} | {r['ttft_p90_ms']:>11} | "
              f"{r['latency_median_ms']:>17} | {r['tokens_per_s']:>8} | {r['mean_completion_tokens']:>10}")


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", help="start `python -m zer02llm.serve` on this checkpoint or run directory")
    where.add_argument("--make-checkpoint", metavar="DIR",
                       help="write a random 26M-shape checkpoint to DIR (if not there yet) and serve it")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="the model name to request (default: the first of /v1/models)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="client threads per level")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="threads= of the servers this script starts")
    parser.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more settings of the engine server this script starts, e.g. engine.max_batch=1 threads=2")
    parser.add_argument("--compare-ref", metavar="REF", help="also run the server of git REF (e.g. today's slot server)")
    parser.add_argument("--compare-args", nargs="*", default=["slots=2", "repetition_penalty=1.0"], metavar="KEY=VALUE",
                        help="settings of the --compare-ref server (default: its 2 slots, and no repetition penalty as ours)")
    parser.add_argument("--peer-transformers", action="store_true",
                        help="also run `transformers serve --continuous-batching` on the exported checkpoint")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1:
        parser.error("--concurrency, --requests and --max-tokens must be >= 1")
    if args.make_checkpoint:
        args.checkpoint = str(make_checkpoint(Path(args.make_checkpoint)))

    results = []  # (name, setup, levels)
    if args.url:
        model, levels = measure(args.url.rstrip("/"), args.model, args)
        results.append(("server", f"server {args.url}, model {model}", levels))
    else:
        runs = [("engine", None, args.engine)]
        if args.compare_ref:
            runs.append((f"ref {args.compare_ref}", source_tree(args.compare_ref), args.compare_args))
        for name, source, extra in runs:
            proc, url = start_server(args, source, extra)
            try:
                model, levels = measure(url, args.model, args)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                if source is not None:
                    shutil.rmtree(source, ignore_errors=True)
            results.append((name, f"{name}: threads={args.threads} {' '.join(extra)}".strip(), levels))
        if args.peer_transformers:
            proc, url, exported = start_peer(args)
            try:
                model, levels = measure(url, exported, args)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                shutil.rmtree(Path(exported).parent, ignore_errors=True)
            results.append(("transformers serve", "transformers serve --continuous-batching --device cpu", levels))

    common = (f"{args.requests} streamed chat requests per level, max_tokens={args.max_tokens}, greedy, "
              f"{os.cpu_count()} CPU cores")
    print(common)
    for name, setup, levels in results:
        print_levels(setup, levels)
    if len(results) > 1:
        base = results[0][2]
        for name, _, levels in results[1:]:
            ratios = [f"{c['concurrency']} clients {b['tokens_per_s'] / max(c['tokens_per_s'], 1e-9):.1f}x"
                      for b, c in zip(base, levels)]
            print(f"engine tokens/s over {name}: " + ", ".join(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": common, "levels": results[0][2],
                                               "servers": [{"name": n, "setup": s, "levels": lv}
                                                           for n, s, lv in results]}, indent=2) + "\n")
    return results[0][2]


if __name__ == "__main__":
    main()
