"""Continuous batching: which sequences run in the next forward, and how many tokens each.

Between two steps, requests that arrived join (up to max_batch running, and only while the cache has
room for their prompt), and finished or cancelled ones have already left. Each step then takes

- every decoding sequence (one token each): all of them in the one forward, whatever their lengths;
- prompt tokens of sequences still in prefill, oldest first, at most prefill_chunk in all: a long prompt
  is computed over several steps while the others keep decoding, instead of stalling them.

When a decoding sequence needs a new block and none is free, the most recently admitted sequence is
preempted: its blocks go back (its computed prefix usually stays in the prefix cache) and it waits at the
head of the queue to be recomputed, prompt and output so far, when room comes back. Output already sent
stays valid: recomputing gives the same cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from zer02llm.inference.engine.block_manager import BlockManager
from zer02llm.inference.engine.sequence import Sequence, Status


@dataclass
class Work:
    """One sequence's part of a step: tokens[start:start + count] computed; `last` when that completes it."""

    seq: Sequence
    start: int
    count: int

    @property
    def last(self) -> bool:
        return self.start + self.count == len(self.seq)


@dataclass
class Step:
    work: list[Work] = field(default_factory=list)  # decoding sequences (count 1) first, then prefill chunks
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(w.count for w in self.work)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch: int, prefill_chunk: int):
        self.blocks, self.max_batch, self.prefill_chunk = blocks, max_batch, prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def drop_cancelled(self) -> list[Sequence]:
        """Take cancelled sequences out (their blocks freed); the caller reports them."""
        gone = [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]
        if gone:
            self.running = [s for s in self.running if not s.cancelled]
            self.waiting = deque(s for s in self.waiting if not s.cancelled)
            for seq in gone:
                self.finish(seq)
        return gone

    def finish(self, seq: Sequence) -> None:
        """seq leaves: blocks back, out of the running list (the caller set its finish_reason)."""
        self.blocks.release(seq)
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)

    def _admit(self) -> None:
        postponed = []
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting[0]
            hits, wait_for_sibling = self.blocks.match(seq)
            if wait_for_sibling and self.running:  # its next block is being computed: share it in a step or two
                postponed.append(self.waiting.popleft())
                continue
            # a block to grow into while others run; alone, a request that check_request let in fits whole
            if not self.blocks.can_admit(seq, hits, reserve=1 if self.running else 0):
                break  # first come, first served: no overtaking by smaller requests
            self.waiting.popleft()
            self.blocks.admit(seq, hits)
            seq.status = Status.RUNNING
            self.running.append(seq)
        self.waiting.extendleft(reversed(postponed))

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def schedule(self) -> Step:
        self._admit()
        step = Step()
        # decoding sequences: each needs room for one more token, else someone is preempted (newest first)
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or seq.num_uncomputed != 1:
                continue
            while not self.blocks.ensure(seq, len(seq)):
                victim = self.running[-1]
                self._preempt(victim)
                step.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                step.work.append(Work(seq, seq.num_computed, 1))
        budget = self.prefill_chunk
        for seq in self.running:
            if budget <= 0:
                break
            if seq.num_uncomputed > 1:  # prompt blocks were all allocated at admission
                count = min(seq.num_uncomputed, budget)
                step.work.append(Work(seq, seq.num_computed, count))
                budget -= count
        return step
