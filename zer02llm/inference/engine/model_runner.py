"""One batched forward for a scheduled step: the tensors that say where each token is, then the model.

The step's tokens are laid flat (decoding sequences first, then prompt chunks) with their positions, the
cache slots they are written to, and each sequence's context slots (see zer02llm/model/paged.py). Only
the rows whose logits are used go through the LM head: the last token of a sequence that samples next,
and, for a scored sequence, the tokens whose successors it scores.

On CUDA, decoding steps can replay CUDA graphs instead of launching every kernel from Python (which is
what decoding a small model waits on): one graph per batch-size bucket (1, 2, 4, 8, then multiples of 8
up to max_batch), each over a context of cuda_graph_max_len slots, the rows past the real batch padding
that writes into a scratch slot. A step that does not fit (prefill in it, a longer context) runs eagerly.
A model whose forward cannot be captured (e.g. an MoE layer that needs the host) warns once and runs
eagerly. The CPU always runs eagerly.

compute_dtype (e.g. bfloat16 for a float32 model being trained under autocast, as GRPO's rollouts): every
forward runs under torch.autocast to that dtype and the cache holds keys and values in it. The autocast's
weight cache is off, so a CUDA graph casts the weights as they are at each replay (a training step updates
them in place between rollouts) instead of keeping the copies made when it was captured.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Optional

import torch

from zer02llm.inference.engine.block_manager import BlockManager
from zer02llm.inference.engine.scheduler import Work
from zer02llm.model import Transformer
from zer02llm.model.paged import PagedBatch, PrefillSegment

log = logging.getLogger(__name__)


def graph_buckets(max_batch: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(8, max_batch + 1, 8))
    return sorted(set(sizes + [max_batch]))


class ModelRunner:
    def __init__(self, model: Transformer, blocks: BlockManager, max_batch: int, cuda_graphs: bool = True,
                 cuda_graph_max_len: int = 2048, compute_dtype: Optional[torch.dtype] = None):
        self.model, self.blocks = model, blocks
        self.bs = blocks.block_size
        self.device = model.tok_embeddings.weight.device
        weights = model.tok_embeddings.weight.dtype
        self.compute_dtype = compute_dtype if compute_dtype not in (None, weights) else None
        # one slot past the budget: where the padding rows of a CUDA graph write
        self.cache = model.new_paged_cache(blocks.num_blocks * self.bs + 1, self.compute_dtype)
        self.scratch = blocks.num_blocks * self.bs
        self._offsets = torch.arange(self.bs)
        self.graphs: Optional[DecodeGraphs] = None
        if cuda_graphs and self.device.type == "cuda":
            width = min(cuda_graph_max_len, model.cfg.max_seq_len, blocks.capacity)
            self.graphs = DecodeGraphs(self, graph_buckets(max_batch), width)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast to compute_dtype (none without one); no weight cache (see the module's doc)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype, cache_enabled=False)

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        """Slots of token indices start..end-1 of a sequence with this block table (CPU, long)."""
        first, last = start // self.bs, -(-end // self.bs)
        slots = (torch.tensor(table[first:last], dtype=torch.long).unsqueeze(1) * self.bs + self._offsets).flatten()
        return slots[start - first * self.bs:end - first * self.bs]

    @torch.inference_mode()
    def run(self, work: list[Work], rows: list[list[int]]) -> torch.Tensor:
        """Forward the step; rows[i]: token indices of work[i]'s sequence whose logits are wanted.
        Returns their logits (sum of len(rows[i]), vocab), float32, in order."""
        decode = [w for w in work if w.count == 1]
        prefill = [w for w in work if w.count > 1]
        ordered = decode + prefill
        position = {id(w): i for i, w in enumerate(ordered)}
        if self.graphs is not None and not prefill and decode:
            logits = self.graphs.run(decode)
            if logits is not None:
                picked = [position[id(w)] for w, r in zip(work, rows) for _ in r]
                return logits[picked]
        # decoding rows in plain Python (one token each: a handful of integers, no small tensors per row),
        # prompt chunks as tensors (they may be long)
        bs = self.bs
        tokens = [w.seq.tokens[w.start] for w in decode]
        positions = [w.start for w in decode]
        slots = [torch.tensor([w.seq.block_table[w.start // bs] * bs + w.start % bs for w in decode],
                              dtype=torch.long)]
        row_start: dict[int, int] = {id(w): i for i, w in enumerate(decode)}
        n = len(decode)
        for w in prefill:
            row_start[id(w)] = n
            tokens.extend(w.seq.tokens[w.start:w.start + w.count])
            positions.extend(range(w.start, w.start + w.count))
            slots.append(self._slots(w.seq.block_table, w.start, w.start + w.count))
            n += w.count
        logit_rows = [row_start[id(w)] + j - w.start for w, r in zip(work, rows) for j in r]
        batch = PagedBatch(positions=torch.tensor(positions, dtype=torch.long, device=self.device),
                           slots=torch.cat(slots).to(self.device), num_decode=len(decode),
                           logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=self.device))
        if decode:
            lengths = torch.tensor([w.start + 1 for w in decode])
            width = int(lengths.max())
            batch.decode_slots, batch.decode_mask = self._decode_context(decode, width, lengths)
        for w in prefill:
            start = row_start[id(w)]
            batch.prefills.append(PrefillSegment(start, start + w.count,
                                                 self._slots(w.seq.block_table, 0, w.start + w.count).to(self.device)))
        with self.autocast():
            return self.model.forward_paged(torch.tensor(tokens, device=self.device), self.cache, batch)

    def _decode_context(self, decode: list[Work], width: int, lengths: torch.Tensor,
                        pad_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots (B, width), mask (B, 1, 1, width)) of decoding sequences' contexts; B = len(decode) + pad_rows,
        padding rows attend only the scratch slot."""
        num_blocks = -(-width // self.bs)
        rows = [w.seq.block_table[:num_blocks] for w in decode]
        tables = torch.tensor([row + [0] * (num_blocks - len(row)) for row in rows] + [[0] * num_blocks] * pad_rows,
                              dtype=torch.long).view(len(decode) + pad_rows, num_blocks)
        slots = (tables.unsqueeze(2) * self.bs + self._offsets).flatten(1)[:, :width]
        columns = torch.arange(width)
        mask = columns.unsqueeze(0) < lengths.unsqueeze(1)
        if pad_rows:
            slots[len(decode):] = self.scratch
            mask = torch.cat([mask, (columns == 0).expand(pad_rows, width)])
        return (slots.to(self.device, non_blocking=True),
                mask.view(mask.size(0), 1, 1, width).to(self.device, non_blocking=True))


class DecodeGraphs:
    """CUDA graphs of the decoding forward at bucketed batch sizes, captured on first use of each bucket."""

    def __init__(self, runner: ModelRunner, buckets: list[int], width: int):
        self.runner, self.buckets, self.width = runner, buckets, width
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self.pool = None
        self.disabled = False
        self.replays = 0

    def run(self, decode: list[Work]) -> Optional[torch.Tensor]:
        """Logits (bucket, vocab) of the decoding rows (the first len(decode) real), or None: run eagerly."""
        if self.disabled:
            return None
        lengths = torch.tensor([w.start + 1 for w in decode])
        bucket = next((b for b in self.buckets if b >= len(decode)), None)
        if bucket is None or int(lengths.max()) > self.width:
            return None
        runner = self.runner
        if bucket not in self.graphs:
            try:
                self.graphs[bucket] = self._capture(bucket)
            except Exception as e:  # a forward the graph cannot hold: eager from now on, the same tokens
                self.disabled = True
                warnings.warn(f"CUDA graphs for decoding are off: capturing the decode step failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); decoding eagerly",
                              stacklevel=2)
                return None
        graph, inputs, logits = self.graphs[bucket]
        pad = bucket - len(decode)
        tokens = torch.tensor([w.seq.tokens[w.start] for w in decode] + [0] * pad)
        positions = torch.cat([lengths - 1, torch.zeros(pad, dtype=torch.long)])
        slots = torch.tensor([runner.blocks.slot(w.seq, w.start) for w in decode] + [runner.scratch] * pad)
        ctx, mask = runner._decode_context(decode, self.width, lengths, pad_rows=pad)
        inputs["tokens"].copy_(tokens, non_blocking=True)
        inputs["positions"].copy_(positions, non_blocking=True)
        inputs["slots"].copy_(slots, non_blocking=True)
        inputs["decode_slots"].copy_(ctx)
        inputs["decode_mask"].copy_(mask)
        graph.replay()
        self.replays += 1
        return logits[:len(decode)].clone()

    def _capture(self, bucket: int):
        runner = self.runner
        device = runner.device
        inputs = {"tokens": torch.zeros(bucket, dtype=torch.long, device=device),
                  "positions": torch.zeros(bucket, dtype=torch.long, device=device),
                  "slots": torch.full((bucket,), runner.scratch, dtype=torch.long, device=device),
                  "decode_slots": torch.full((bucket, self.width), runner.scratch, dtype=torch.long, device=device),
                  "decode_mask": torch.zeros(bucket, 1, 1, self.width, dtype=torch.bool, device=device)}
        inputs["decode_mask"][..., 0] = True
        batch = PagedBatch(positions=inputs["positions"], slots=inputs["slots"], num_decode=bucket,
                           decode_slots=inputs["decode_slots"], decode_mask=inputs["decode_mask"])

        def forward() -> torch.Tensor:
            with runner.autocast():
                return runner.model.forward_paged(inputs["tokens"], runner.cache, batch)

        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lazy initialisations happen outside the capture
                    forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = forward()
            self.pool = graph.pool()
        torch.cuda.synchronize()
        log.info("captured a CUDA graph for decoding at batch %d", bucket)
        return graph, inputs, logits
