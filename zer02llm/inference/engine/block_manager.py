"""The KV cache's bookkeeping: fixed-size blocks of token slots, a token budget, and prefix caching.

The cache is kv_budget_tokens slots cut into blocks of block_size tokens. A sequence owns a list of
blocks (its block table) that grows as it does; token i of it lives in slot
`block_table[i // block_size] * block_size + i % block_size`. Nothing is reserved for a sequence's
future: it takes blocks as it needs them, so the budget is spent on tokens that exist, and a batch can
hold as many sequences as their actual lengths allow (not max_tokens worth each).

Prefix caching: once all of a block's tokens are computed, the block is registered under a hash of its
tokens and of every token before them (a chain: block i's hash covers tokens 0 .. (i+1)*block_size).
A new sequence whose prompt begins with the same tokens takes those blocks as they are (a reference
count, no copy) and computes only the rest: the same system prompt, OpenAI's n>1, RL's G samples of
one prompt, the earlier turns of a chat, the context shared by the continuations of a multiple-choice
question. A block no sequence holds is free but keeps its contents and hash until the space is needed
(evicted least recently freed first), so a prefix stays reusable after the requests that computed it.
Only full blocks are shared, and a shared block is never written to: a sequence writes only into
blocks past its matched prefix, which are its own.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from zer02llm.inference.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "pending")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: Optional[int] = None  # set once its tokens are computed (and it is full)
        self.token_ids: tuple[int, ...] = ()
        self.pending: Optional[int] = None  # the hash it will have, while its prompt tokens are computed


def chain_hash(previous: Optional[int], tokens: tuple[int, ...]) -> int:
    return hash((previous, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks}, block_size={block_size}: both must be >= 1")
        self.block_size, self.num_blocks, self.prefix_caching = block_size, num_blocks, prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # least recent first
        self.cached: dict[int, int] = {}  # hash -> block id, computed full blocks
        self.pending: dict[int, int] = {}  # hash -> block id, full prompt blocks being computed
        self.hit_tokens = 0  # prompt tokens taken from the cache instead of computed, since the start
        self._hashes: dict[int, list[int]] = {}  # seq_id -> chained hashes of its registered blocks

    # --- sizes
    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def capacity(self) -> int:
        return self.num_blocks * self.block_size

    # --- prefix matching
    def _prompt_hashes(self, seq: Sequence, num_blocks: int) -> list[tuple[int, tuple[int, ...]]]:
        out, previous, bs = [], None, self.block_size
        for i in range(num_blocks):
            tokens = tuple(seq.tokens[i * bs:(i + 1) * bs])
            previous = chain_hash(previous, tokens)
            out.append((previous, tokens))
        return out

    def _matchable_blocks(self, seq: Sequence) -> int:
        """Full blocks a cache hit may cover: the last token is always computed (its logits sample the next
        one), and a scored sequence computes every token whose logits it scores."""
        last_needed = len(seq) - 1
        if seq.score_from is not None:
            last_needed = min(last_needed, seq.score_from - 1)
        return max(0, last_needed) // self.block_size

    def match(self, seq: Sequence) -> tuple[list[int], bool]:
        """(cached blocks that hold the start of seq's tokens, whether the next block is being computed now
        by another sequence: then waiting a few steps turns it into a hit)."""
        if not self.prefix_caching:
            return [], False
        hits = []
        for h, tokens in self._prompt_hashes(seq, self._matchable_blocks(seq)):
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                return hits, h in self.pending
            hits.append(block_id)
        return hits, False

    # --- allocation
    def can_admit(self, seq: Sequence, hits: list[int], reserve: int = 1) -> bool:
        """Whether the free blocks hold seq's uncached tokens, plus `reserve` blocks to grow into."""
        new = self.blocks_for(len(seq)) - len(hits)
        taken_from_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return new + taken_from_free + reserve <= self.num_free

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Give seq its cached prefix and fresh blocks for the rest of its tokens (can_admit first)."""
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_computed = len(hits) * self.block_size
        seq.num_cached_prompt = seq.num_computed
        self.hit_tokens += seq.num_computed
        hashes = self._prompt_hashes(seq, len(hits)) if hits else []
        self._hashes[seq.seq_id] = [h for h, _ in hashes]
        self._grow(seq, len(seq))
        if self.prefix_caching:  # the full prompt blocks to come: siblings wait for them (see match)
            full = min(len(seq), self._matchable_blocks(seq) * self.block_size) // self.block_size
            for i, (h, _) in enumerate(self._prompt_hashes(seq, full)):
                if i >= len(hits) and h not in self.cached and h not in self.pending:
                    self.pending[h] = seq.block_table[i]
                    self.blocks[seq.block_table[i]].pending = h

    def ensure(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for seq's first num_tokens tokens; False (nothing taken) when the free blocks are too few."""
        if self.blocks_for(num_tokens) - len(seq.block_table) > self.num_free:
            return False
        self._grow(seq, num_tokens)
        return True

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_table) < self.blocks_for(num_tokens):
            block_id, _ = self.free.popitem(last=False)  # least recently freed: evict its cached contents
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.token_ids, block.ref_count = None, (), 1
            seq.block_table.append(block_id)

    def computed(self, seq: Sequence) -> None:
        """Register seq's blocks that are now full and computed, so later sequences can share them."""
        if not self.prefix_caching:
            return
        hashes = self._hashes.setdefault(seq.seq_id, [])
        bs = self.block_size
        for i in range(len(hashes), seq.num_computed // bs):
            tokens = tuple(seq.tokens[i * bs:(i + 1) * bs])
            h = chain_hash(hashes[-1] if hashes else None, tokens)
            hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.pending is not None:
                self.pending.pop(block.pending, None)
                block.pending = None
            if block.hash is None:
                block.hash, block.token_ids = h, tokens
                self.cached.setdefault(h, block.block_id)

    def release(self, seq: Sequence) -> None:
        """seq's blocks back (those no other sequence holds become free, their cached contents kept)."""
        for block_id in reversed(seq.block_table):  # the prefix's blocks are freed last, so evicted last
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.pending is not None:  # never computed: nobody may wait for it any more
                    self.pending.pop(block.pending, None)
                    block.pending = None
                self.free[block_id] = None
        seq.block_table = []
        seq.num_computed = 0
        self._hashes.pop(seq.seq_id, None)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: later sequences compute their prompts afresh. For when the weights
        changed (RL: a rollout after an optimizer step must not reuse keys and values of older weights).
        Only when no sequence holds a block."""
        if self.num_free != self.num_blocks:
            raise RuntimeError(f"reset_prefix_cache with {self.num_blocks - self.num_free} blocks still held: "
                               f"finish or cancel the running requests first")
        for block in self.blocks:
            block.hash, block.token_ids, block.pending = None, (), None
        self.cached.clear()
        self.pending.clear()

    def slot(self, seq: Sequence, index: int) -> int:
        return seq.block_table[index // self.block_size] * self.block_size + index % self.block_size

    def check_all_free(self) -> list[str]:
        """Problems with an idle cache (tests: nothing leaked): every block free, nothing pending."""
        problems = []
        if self.num_free != self.num_blocks:
            problems.append(f"{self.num_blocks - self.num_free} of {self.num_blocks} blocks still held")
        held = [b.block_id for b in self.blocks if b.ref_count]
        if held:
            problems.append(f"blocks with references: {held[:10]}")
        if self.pending:
            problems.append(f"{len(self.pending)} pending prefix blocks")
        if self._hashes:
            problems.append(f"hash chains of {len(self._hashes)} sequences")
        return problems
