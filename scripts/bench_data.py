"""Tokenization throughput, memory and cache-hit time on a corpus built from ../shared/data.

    python scripts/bench_data.py --size-mb 200

Builds a JSONL corpus of about --size-mb MB in a temporary directory by repeating the shared
pretraining files (never committed), then prints:
  1. the tokenizers library's own encode_batch throughput on the same texts (MB/s),
  2. our tokenization to the cache (zer02llm.data.pretrain.tokenize_to_cache) in MB/s, and the ratio,
  3. the peak RSS of the process that tokenized (a subprocess, ru_maxrss),
  4. the data preparation time of a second run (cache hit: pretrain_data over the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def build_corpus(out: Path, size_mb: float) -> int:
    sources = [SHARED / "pretrain_en.jsonl", SHARED / "pretrain_zh.jsonl"]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found: the benchmark builds its corpus from ../shared/data")
    blocks = [p.read_bytes() for p in sources]
    target, written = int(size_mb * 1e6), 0
    with open(out, "wb") as f:
        while written < target:
            for block in blocks:
                f.write(block)
                written += len(block)
    return written


def child(mode: str, corpus: str, cache: str, threads: int) -> None:
    """Run one measurement in this (sub)process and print a JSON line."""
    sys.path.insert(0, str(REPO))
    from zer02llm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load()
    size = os.path.getsize(corpus)
    if mode == "library":  # the same texts, already in memory: the library's own figure
        texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
        text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        figures = {"text_mb": text_mb}
        for name in ("encode_batch", "encode_batch_fast"):  # we use the second (no character offsets)
            call = getattr(tokenizer.backend, name)
            started = time.perf_counter()
            for i in range(0, len(texts), 2048):
                call(texts[i:i + 2048], add_special_tokens=False)
            seconds = time.perf_counter() - started
            figures[name] = {"seconds": seconds, "mb_per_s": size / 1e6 / seconds}
        print(json.dumps(figures))
    elif mode == "ours":
        from zer02llm.data.pretrain import tokenize_to_cache

        started = time.perf_counter()
        tokens = tokenize_to_cache(corpus, tokenizer, cache, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        print(json.dumps({"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "peak_rss_mb": rss,
                          "tokens": tokens.num_tokens}))
    else:  # a second run's data preparation: everything the trainer asks of the data
        from zer02llm.config import DataConfig
        from zer02llm.data.inputs import pretrain_data

        started = time.perf_counter()
        train, _ = pretrain_data(DataConfig(train_path=corpus, val_path=None, seq_len=512, cache_dir=cache),
                                 tokenizer, seed=0)
        print(json.dumps({"seconds": time.perf_counter() - started, "windows": len(train)}))


def run_child(mode: str, corpus: Path, cache: Path, threads: int) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus), str(cache), str(threads)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: the {mode} measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200.0, help="corpus size in MB (default 200)")
    parser.add_argument("--threads", type=int, default=0, help="tokenizer threads (default: every core)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, corpus, cache, threads = args.child
        return child(mode, corpus, cache, int(threads))
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        corpus, cache = Path(tmp) / "corpus.jsonl", Path(tmp) / "cache"
        size = build_corpus(corpus, args.size_mb)
        print(f"corpus: {size / 1e6:.1f} MB of JSONL (repeated ../shared/data pretrain files), {os.cpu_count()} "
              f"CPU cores, tokenizer threads: {args.threads or 'all'}")
        library = run_child("library", corpus, cache, args.threads)
        ours = run_child("ours", corpus, cache, args.threads)
        again = run_child("again", corpus, cache, args.threads)
        plain, fast = library["encode_batch"], library["encode_batch_fast"]
        print(f"1. tokenizers on the texts in memory: encode_batch {plain['mb_per_s']:.2f} MB/s of JSONL "
              f"({plain['seconds']:.1f} s), encode_batch_fast {fast['mb_per_s']:.2f} MB/s ({fast['seconds']:.1f} s)")
        print(f"2. tokenize_to_cache (read + parse + encode + write): {ours['mb_per_s']:.2f} MB/s "
              f"({ours['seconds']:.1f} s, {ours['tokens']:,} tokens): {ours['mb_per_s'] / plain['mb_per_s']:.0%} of "
              f"encode_batch (goal >= 85%), {ours['mb_per_s'] / fast['mb_per_s']:.0%} of encode_batch_fast")
        print(f"3. peak RSS of the tokenizing process: {ours['peak_rss_mb']:.0f} MB (goal < 1024 MB)")
        print(f"4. second run's data preparation (cache hit, {again['windows']:,} windows of 513 tokens): "
              f"{again['seconds']:.3f} s (goal < 1 s)")


if __name__ == "__main__":
    main()
