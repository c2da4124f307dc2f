"""Validation metrics against closed-form values: loss, perplexity and bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

from zer02llm.training.validation import evaluate, loss_sums, metrics_from_sums, token_losses
from zer02llm.model import IGNORE_INDEX, Output
from zer02llm.tokenizer import Tokenizer


class UniformModel(torch.nn.Module):
    """Equal logits for every token: each target costs exactly ln(vocab) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.calls: list[dict] = []

    def forward(self, tokens, **kwargs):
        self.calls.append(kwargs)
        return Output(torch.zeros(*tokens.shape, self.vocab), None)


class ListDataset:
    def __init__(self, rows: list[tuple[list[int], list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices):
        return (torch.tensor([self.rows[i][0] for i in indices]), torch.tensor([self.rows[i][1] for i in indices]))


def test_token_losses_match_a_per_token_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen)
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    targets[1, 2] = IGNORE_INDEX
    got = token_losses(logits, targets)
    for b in range(2):
        for t in range(5):
            expected = 0.0 if targets[b, t] < 0 else -torch.log_softmax(logits[b, t], -1)[targets[b, t]].item()
            assert got[b, t].item() == pytest.approx(expected, abs=1e-6)


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_over_bytes():
    vocab = 16
    byte_lengths = torch.tensor([0, 0] + [1, 2, 3, 4] * 3 + [0, 0])  # ids 0, 1, 14, 15: special
    rows = [([1, 2, 3, 4], [2, 3, 0, 5]), ([5, 6, 7, 8], [IGNORE_INDEX, 9, 10, 15])]
    model = UniformModel(vocab)
    metrics = evaluate(model, ListDataset(rows), batch_size=1, max_batches=-1, byte_lengths=byte_lengths,
                       device=torch.device("cpu"))
    text_targets = [2, 3, 5, 9, 10]  # not ignored, with bytes
    n_bytes = sum(int(byte_lengths[t]) for t in text_targets)
    sums = sum(loss_sums(UniformModel(vocab)(torch.tensor([r[0]])).logits, torch.tensor([r[1]]), byte_lengths)
               for r in rows)
    assert sums[1].item() == 7 and sums[3].item() == n_bytes  # targets counted (one ignored), their bytes
    assert metrics["val_loss"] == pytest.approx(math.log(vocab))  # each counted target costs ln V
    assert metrics["val_ppl"] == pytest.approx(vocab)
    assert metrics["val_bpb"] == pytest.approx(len(text_targets) * math.log2(vocab) / n_bytes)
    assert len(model.calls) == 2


def test_max_batches_and_forward_kwargs():
    rows = [([1, 2], [2, 3])] * 5
    model = UniformModel(8)
    evaluate(model, ListDataset(rows), batch_size=2, max_batches=2, byte_lengths=torch.ones(8, dtype=torch.long),
             device=torch.device("cpu"), forward_kwargs=lambda inputs: {"doc_ids": inputs * 0})
    assert len(model.calls) == 2 and all("doc_ids" in c for c in model.calls)


def test_byte_lengths_of_the_shipped_tokenizer_count_utf8_bytes_and_no_specials():
    tok = Tokenizer.load()
    lengths = torch.tensor(tok.byte_lengths())
    for text in ["Hello, world.", "星期三，天气很好", "mixed 中文 and ascii ✓"]:
        ids = torch.tensor(tok.encode(text))
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert all(lengths[i] == 0 for i in (tok.bos_id, tok.eos_id, tok.pad_id))


def test_sums_add_over_batches_like_one_batch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 9, generator=gen)
    targets = torch.randint(0, 9, (4, 6), generator=gen)
    lengths = torch.randint(0, 4, (9,), generator=gen)
    whole = loss_sums(logits, targets, lengths)
    parts = loss_sums(logits[:2], targets[:2], lengths) + loss_sums(logits[2:], targets[2:], lengths)
    torch.testing.assert_close(whole, parts)
    assert metrics_from_sums(whole.tolist())["val_loss"] == pytest.approx(token_losses(logits, targets).mean().item())
