"""bos-aligned packing (data.packing=bos_aligned): the layout rule, its invariants, edge cases, and
first_positions_mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import zer02llm.data.packing as packing
from zer02llm.data.jsonl import DataError
from zer02llm.data.packing import (BosAlignedDataset, best_fit, document_starts, first_positions_mask,
                                   pretrain_dataset)
from zer02llm.data.pretrain import PackedDataset, TokenFile, tokenize_to_cache
from zer02llm.model import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

BOS, EOS, PAD = 1, 2, 0
SAMPLE_CORPUS = Path(packing.__file__).resolve().parents[1] / "sample_data" / "pretrain.jsonl"


def corpus(tmp_path: Path, lengths: list[int], lead: int = 0) -> tuple[TokenFile, np.ndarray]:
    """A token file of documents of `lengths` (bos, text, eos), after `lead` tokens of no document.
    Text tokens are 10 + their position in the file, so each one says where it came from."""
    tokens = np.arange(10, 10 + lead + sum(lengths), dtype=np.uint32)
    start = lead
    for n in lengths:
        tokens[start] = BOS
        if n > 1:
            tokens[start + n - 1] = EOS
        start += n
    path = tmp_path / f"tokens-{len(list(tmp_path.glob('*.bin')))}.bin"
    tokens.tofile(path)
    return TokenFile(path, np.dtype(np.uint32), len(tokens), len(lengths), 0, "corpus.jsonl"), tokens


def check_layout(data: BosAlignedDataset, tokens: np.ndarray) -> None:
    """Every invariant of the layout, checked against the token file itself."""
    window = data.seq_len + 1
    starts = np.flatnonzero(tokens == BOS)
    lengths = np.diff(np.append(starts, len(tokens)))
    position = np.arange(len(tokens))
    doc = np.searchsorted(starts, position, side="right") - 1  # -1: before the first bos
    spare = (doc < 0) | (position >= starts[np.maximum(doc, 0)] + window)  # tails and any lead
    uses = np.zeros(len(tokens), dtype=np.int64)
    openers, followers = [], []
    inputs, targets = data.batch(list(range(len(data))))
    for i in range(len(data)):
        seg_starts, seg_lengths = data.segments(i)
        assert seg_lengths.sum() == window and (seg_lengths > 0).all()
        row = np.concatenate([tokens[s:s + n] if s >= 0 else np.full(n, PAD) for s, n in zip(seg_starts, seg_lengths)])
        pad = np.concatenate([np.full(n, s < 0) for s, n in zip(seg_starts, seg_lengths)])
        assert inputs[i].tolist() == row[:-1].tolist()
        assert targets[i].tolist() == np.where(pad[1:], IGNORE_INDEX, row[1:]).tolist()
        assert row[0] == BOS and seg_starts[0] in starts  # the window opens at a document's bos
        kind = "document"
        for j, (s, n) in enumerate(zip(seg_starts, seg_lengths)):
            if s < 0:
                assert j == len(seg_starts) - 1  # padding only at the end
                continue
            assert doc[s] == doc[s + n - 1]  # one contiguous run of one document, in order
            uses[s:s + n] += 1
            if tokens[s] == BOS and not spare[s]:  # a document: its head opens the window, or it is whole
                assert kind == "document"  # documents come before any filler
                d = doc[s]
                if j == 0:
                    assert n == min(lengths[d], window)
                    openers.append(d)
                else:
                    assert n == lengths[d]
                    followers.append(d)
            else:  # filler: a piece of a tail (or of the tokens before the first bos)
                assert spare[s:s + n].all()
                kind = "filler"
    assert uses.max() <= 1  # no token twice
    assert uses[~spare].all()  # every document's head is in a window
    assert sorted(openers + followers) == list(range(len(starts)))  # each once: at position 0 or after another
    assert openers == sorted(openers)  # windows in the order of their opening documents
    stats = data.stats
    assert (stats.num_windows, stats.num_documents, stats.num_tokens) == (len(data), len(starts), len(tokens))
    assert stats.used == uses.sum() and stats.dropped == (uses == 0).sum() == (spare & (uses == 0)).sum()
    assert stats.padded == int((targets == IGNORE_INDEX).sum())
    assert stats.cut_documents == int((lengths > window).sum())
    assert data.fixed_targets == (stats.padded == 0)


def reference_best_fit(sizes: list[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """Best-fit decreasing one item at a time: items by size (largest first, then index); a bin takes,
    in that order, every item that still fits."""
    remaining = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    items, offsets, free_space = [], [0], []
    while remaining:
        free, taken = capacity, []
        for i in remaining:
            if sizes[i] <= free:
                taken.append(i)
                free -= sizes[i]
        remaining = [i for i in remaining if i not in set(taken)]
        items += taken
        offsets.append(len(items))
        free_space.append(free)
    return items, offsets, free_space


# --- the rule ------------------------------------------------------------------------------------

def test_a_small_corpus_is_laid_out_by_the_rule(tmp_path):
    # window 10: document 1 (25 tokens) is cut; the others are packed best fit, the gaps filled from its tail
    token_file, tokens = corpus(tmp_path, [4, 25, 7, 3, 5, 2])  # documents start at 0, 4, 29, 36, 39, 44
    data = BosAlignedDataset(token_file, seq_len=9, bos_id=BOS, pad_id=PAD)
    layout = [list(zip(*(a.tolist() for a in data.segments(i)))) for i in range(len(data))]
    assert layout == [
        [(4, 10)],  # the head of the long document opens a window of its own
        [(29, 7), (36, 3)],  # 7 opens, the largest that fits after it is 3
        [(39, 5), (0, 4), (14, 1)],  # 5, then 4, then no document fits 1: a piece of the tail
        [(44, 2), (15, 8)],  # the last document, the rest filled with the tail
    ]
    stats = data.stats
    assert (stats.used, stats.filler, stats.dropped, stats.padded) == (40, 9, 6, 0)
    assert data.fixed_targets
    inputs, targets = data.batch([2])
    assert inputs[0].tolist() == tokens[[39, 40, 41, 42, 43, 0, 1, 2, 3]].tolist()
    assert targets[0].tolist() == tokens[[40, 41, 42, 43, 0, 1, 2, 3, 14]].tolist()
    check_layout(data, tokens)


@pytest.mark.parametrize("seed", range(6))
def test_random_corpora_keep_every_invariant(tmp_path, seed):
    rng = np.random.default_rng(seed)
    seq_len = int(rng.choice([7, 16, 31]))
    kinds = rng.integers(0, 3, size=int(rng.integers(1, 60)))
    # tiny documents (a stray bos makes even 1- and 2-token ones), about a window, and long ones
    lengths = np.where(kinds == 0, rng.integers(1, 6, len(kinds)),
                       np.where(kinds == 1, rng.integers(seq_len - 2, seq_len + 4, len(kinds)),
                                rng.integers(seq_len, 5 * seq_len, len(kinds))))
    token_file, tokens = corpus(tmp_path, [max(1, int(n)) for n in lengths], lead=int(rng.integers(0, 2)) * 5)
    data = BosAlignedDataset(token_file, seq_len, BOS, PAD)
    check_layout(data, tokens)
    again = BosAlignedDataset(token_file, seq_len, BOS, PAD)  # the layout is a function of the file
    assert all((a == b).all() for a, b in zip(again.batch(range(len(again))), data.batch(range(len(data)))))


@pytest.mark.parametrize("seed", range(20))
def test_best_fit_places_the_largest_item_that_fits_as_a_plain_loop_does(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(1, 40))
    sizes = rng.integers(1, capacity + 1, size=int(rng.integers(0, 200)))
    if seed % 2:  # few distinct sizes: long runs of repeated bin patterns
        sizes = rng.choice(np.unique(sizes), size=len(sizes)) if len(sizes) else sizes
    items, offsets, free = best_fit(sizes, capacity)
    assert (items.tolist(), offsets.tolist(), free.tolist()) == reference_best_fit(sizes.tolist(), capacity)


def test_document_starts_are_found_across_scan_slices(tmp_path, monkeypatch):
    _, tokens = corpus(tmp_path, [3, 9, 1, 14, 2, 8], lead=2)
    expected = np.flatnonzero(tokens == BOS).tolist()
    monkeypatch.setattr(packing, "SCAN_TOKENS", 4)
    assert document_starts(tokens, BOS).tolist() == expected


# --- edge cases ----------------------------------------------------------------------------------

def test_one_huge_document_is_one_window_and_its_tail_dropped(tmp_path):
    token_file, tokens = corpus(tmp_path, [1000])
    data = BosAlignedDataset(token_file, seq_len=15, bos_id=BOS, pad_id=PAD)
    assert len(data) == 1 and data.fixed_targets
    assert (data.stats.used, data.stats.dropped, data.stats.padded) == (16, 984, 0)
    inputs, targets = data.batch([0])
    assert inputs[0].tolist() == tokens[:15].tolist() and targets[0].tolist() == tokens[1:16].tolist()
    check_layout(data, tokens)


def test_all_tiny_documents_are_packed_and_the_rest_padded(tmp_path):
    token_file, tokens = corpus(tmp_path, [3] * 10)  # 3 per window of 10, the last window holds one
    data = BosAlignedDataset(token_file, seq_len=9, bos_id=BOS, pad_id=PAD)
    assert len(data) == 4 and not data.fixed_targets  # padding varies the number of targets
    assert (data.stats.used, data.stats.dropped, data.stats.padded) == (30, 0, 1 + 1 + 1 + 7)
    inputs, targets = data.batch([3])
    assert inputs[0].tolist() == tokens[27:30].tolist() + [PAD] * 6
    assert targets[0].tolist() == tokens[28:30].tolist() + [IGNORE_INDEX] * 7
    check_layout(data, tokens)


def test_a_document_of_exactly_one_window_fills_it_whole(tmp_path):
    token_file, tokens = corpus(tmp_path, [10, 10])
    data = BosAlignedDataset(token_file, seq_len=9, bos_id=BOS, pad_id=PAD)
    assert len(data) == 2 and data.stats.cut_documents == 0
    assert (data.stats.used, data.stats.dropped, data.stats.padded) == (20, 0, 0)
    assert data.batch([1])[1][0].tolist() == tokens[11:20].tolist()  # its eos is the last target
    one_short = BosAlignedDataset(corpus(tmp_path, [9])[0], seq_len=9, bos_id=BOS, pad_id=PAD)
    assert one_short.stats.padded == 1 and not one_short.fixed_targets


def test_unusable_token_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"^corpus.jsonl holds no tokens: data.packing=bos_aligned needs"):
        BosAlignedDataset(TokenFile(empty, np.dtype(np.uint16), 0, 0, 0, "corpus.jsonl"), 8, BOS, PAD)
    no_bos = tmp_path / "no_bos.bin"
    np.arange(5, 50, dtype=np.uint16).tofile(no_bos)
    with pytest.raises(DataError, match=r"^corpus.jsonl: none of its 45 tokens is bos \(id 1\).*another tokenizer"):
        BosAlignedDataset(TokenFile(no_bos, np.dtype(np.uint16), 45, 0, 0, "corpus.jsonl"), 8, BOS, PAD)
    with pytest.raises(DataError, match=r"data.seq_len=0 is not positive"):
        BosAlignedDataset(corpus(tmp_path, [5])[0], 0, BOS, PAD)


# --- choosing the packing; the shipped tokenizer ----------------------------------------------------

def test_pretrain_dataset_chooses_by_packing_and_concat_is_unchanged(tmp_path):
    token_file, tokens = corpus(tmp_path, [40, 7, 30, 3])
    concat = pretrain_dataset(token_file, 10, "concat", BOS, PAD)
    assert type(concat) is PackedDataset and concat.fixed_targets and len(concat) == (80 - 1) // 10
    inputs, targets = concat.batch([0, 3])
    assert inputs[1].tolist() == tokens[30:40].tolist() and targets[1].tolist() == tokens[31:41].tolist()
    assert isinstance(pretrain_dataset(token_file, 10, "bos_aligned", BOS, PAD), BosAlignedDataset)
    with pytest.raises(DataError, match=r"data.packing='bos' is not a packing: expected one of concat, bos_aligned"):
        pretrain_dataset(token_file, 10, "bos", BOS, PAD)


def test_the_sample_corpus_with_the_shipped_tokenizer(tmp_path, caplog):
    tokenizer = Tokenizer.load()
    token_file = tokenize_to_cache(SAMPLE_CORPUS, tokenizer, tmp_path / "cache", progress=False)
    tokens = np.asarray(token_file.load())
    for seq_len in (64, 256):
        with caplog.at_level("INFO", logger="zer02llm.data.packing"):
            data = BosAlignedDataset(token_file, seq_len, tokenizer.bos_id, tokenizer.pad_id)
        inputs, targets = data.batch(range(len(data)))
        assert (inputs[:, 0] == tokenizer.bos_id).all()
        assert int((targets == IGNORE_INDEX).sum()) == data.stats.padded
        assert f"bos_aligned packing of {SAMPLE_CORPUS}" in caplog.text and "dropped" in caplog.text
        starts = set(np.flatnonzero(tokens == tokenizer.bos_id).tolist())
        assert {int(data.segments(i)[0][0]) for i in range(len(data))} <= starts
        assert data.stats.used + data.stats.dropped == token_file.num_tokens


# --- first_positions_mask ------------------------------------------------------------------------

def test_first_positions_mask_marks_the_first_k_targets_after_each_bos():
    # a concat-style row: the end of an earlier document, then two documents
    inputs = torch.tensor([[7, 8, BOS, 3, 4, 5, EOS, BOS, 6, 9]])
    targets = torch.tensor([[8, BOS, 3, 4, 5, EOS, BOS, 6, 9, 11]])
    assert first_positions_mask(inputs, targets, BOS, k=2).int().tolist() == [[0, 0, 1, 1, 0, 0, 0, 1, 1, 0]]
    # the eos ending a short document is one of its first tokens; predicting the next bos is not
    assert first_positions_mask(inputs, targets, BOS, k=8).int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 1, 1, 1]]
    with_eos = first_positions_mask(inputs, targets, BOS, k=8, eos_id=EOS)
    assert with_eos.equal(first_positions_mask(inputs, targets, BOS, k=8))
    padded_inputs, padded_targets = torch.tensor([[BOS, 3, EOS, PAD, PAD]]), torch.tensor([[3, EOS] + [IGNORE_INDEX] * 3])
    assert first_positions_mask(padded_inputs, padded_targets, BOS).int().tolist() == [[1, 1, 0, 0, 0]]
    # bos_aligned filler after an eos is no document start; given eos_id, the mask knows it
    filled_inputs, filled_targets = torch.tensor([[BOS, 3, EOS, 20, 21]]), torch.tensor([[3, EOS, 20, 21, 22]])
    assert first_positions_mask(filled_inputs, filled_targets, BOS).int().tolist() == [[1, 1, 1, 1, 1]]
    assert first_positions_mask(filled_inputs, filled_targets, BOS, eos_id=EOS).int().tolist() == [[1, 1, 0, 0, 0]]


def test_first_positions_mask_on_bos_aligned_windows(tmp_path):
    token_file, _ = corpus(tmp_path, [40, 5, 12, 30, 3])
    data = BosAlignedDataset(token_file, seq_len=15, bos_id=BOS, pad_id=PAD)
    inputs, targets = data.batch(range(len(data)))
    mask = first_positions_mask(inputs, targets, BOS, k=8, eos_id=EOS)
    assert mask[:, :4].all()  # every window starts a document: its first targets are first positions
    # as many marks as documents with their bos in the window have first targets there
    for row in range(len(data)):
        seg_starts, seg_lengths = data.segments(row)
        docs = [n for s, n in zip(seg_starts, seg_lengths) if s >= 0 and token_file.load()[s] == BOS]
        assert int(mask[row].sum()) == sum(min(n - 1, 8) for n in docs)
