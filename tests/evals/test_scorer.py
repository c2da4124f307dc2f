"""The scorer: log-likelihoods with the context computed once equal a naive loop over whole sequences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from zer02llm.config import ModelConfig
from zer02llm.evals.scorer import ModelScorer, encode_pair
from zer02llm.model import Transformer
from zer02llm.tokenizer import Tokenizer


def naive_logprob(model: Transformer, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One full forward of context + continuation, no cache: the sum of the continuation's log-probabilities
    (its last token is only predicted, never read)."""
    tokens = torch.tensor([context + continuation[:-1]])
    with torch.no_grad():
        logprobs = F.log_softmax(model(tokens).logits[0].double(), dim=-1)
    positions = range(len(context) - 1, len(context) + len(continuation) - 1)
    total = sum(float(logprobs[p, t]) for p, t in zip(positions, continuation))
    greedy = all(int(logprobs[p].argmax()) == t for p, t in zip(positions, continuation))
    return total, greedy


@pytest.fixture(params=["sdpa", "math"])
def model(request) -> Transformer:
    cfg = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      attention=request.param)
    return randomize(Transformer(cfg), seed=3).double().eval()


def test_shared_context_scores_equal_a_naive_loop_over_whole_sequences(model):
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(0, 97, (11,), generator=gen).tolist()
    # different lengths: the shorter ones are padded in the batch, which must not reach their scores
    continuations = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (1, 4, 2, 7)]
    scores = ModelScorer(model).loglikelihoods([(context, continuations)])[0]
    for continuation, score in zip(continuations, scores):
        expected, greedy = naive_logprob(model, context, continuation)
        assert score.logprob == pytest.approx(expected, abs=1e-9)
        assert score.num_tokens == len(continuation)
        assert score.greedy == greedy


@pytest.mark.parametrize("batch_tokens", [1, 64, 10_000])
def test_requests_batched_together_score_as_each_alone(model, batch_tokens):
    """Rows of different lengths padded into one forward (or one row per forward): the naive loop's numbers."""
    gen = torch.Generator().manual_seed(1)
    requests = [(torch.randint(0, 97, (n,), generator=gen).tolist(),
                 [torch.randint(0, 97, (m,), generator=gen).tolist() for m in lengths])
                for n, lengths in ((3, (2, 5)), (17, (1, 1, 1)), (1, (6,)), (9, (3, 4, 2, 1)))]
    scored = ModelScorer(model, batch_tokens=batch_tokens).loglikelihoods(requests)
    for (context, continuations), scores in zip(requests, scored):
        for continuation, score in zip(continuations, scores):
            expected, greedy = naive_logprob(model, context, continuation)
            assert score.logprob == pytest.approx(expected, abs=1e-9)
            assert score.greedy == greedy


def test_greedy_is_true_exactly_when_every_token_is_the_argmax(model):
    context = [5, 17, 3]
    continuation = []
    tokens = list(context)
    with torch.no_grad():  # the model's own greedy continuation, three tokens
        for _ in range(3):
            next_id = int(model(torch.tensor([tokens])).logits[0, -1].argmax())
            continuation.append(next_id)
            tokens.append(next_id)
    wrong_last = continuation[:-1] + [(continuation[-1] + 1) % 97]
    right, wrong = ModelScorer(model).loglikelihoods([(context, [continuation, wrong_last])])[0]
    assert right.greedy and not wrong.greedy
    assert right.logprob > wrong.logprob


def test_a_context_too_long_is_cut_from_the_left(model):
    context = list(range(1, 90))  # 89 tokens; the model reads 64: the last 62 and two of the continuation
    continuation = [7, 8, 9]
    score = ModelScorer(model).loglikelihoods([(context, [continuation])])[0][0]
    expected, _ = naive_logprob(model, context[-(64 - 3 + 1):], continuation)
    assert score.logprob == pytest.approx(expected, abs=1e-9)


def test_encode_pair_splits_the_whole_texts_tokens_and_moves_trailing_spaces():
    tokenizer = Tokenizer.load()
    context_ids, continuation_ids = encode_pair(tokenizer, "Today is Monday. Tomorrow will be", " Tuesday")
    assert context_ids + continuation_ids == [tokenizer.bos_id] + tokenizer.encode("Today is Monday. Tomorrow will be Tuesday")
    assert context_ids == [tokenizer.bos_id] + tokenizer.encode("Today is Monday. Tomorrow will be")
    # "be " + "Tuesday" is read as "be" + " Tuesday", the tokens the model saw in training
    assert encode_pair(tokenizer, "Tomorrow will be ", "Tuesday") == encode_pair(tokenizer, "Tomorrow will be", " Tuesday")


def test_greedy_generation_stops_at_a_stop_id_or_when_told(model):
    scorer = ModelScorer(model)
    free = scorer.generate([[1, 2, 3]], 6, stop_ids=[])[0]
    assert len(free) == 6
    assert scorer.generate([[1, 2, 3]], 6, stop_ids=[free[2]])[0] == free[:free.index(free[2]) + 1]
    assert scorer.generate([[1, 2, 3]], 6, stop_ids=[], stop=lambda new: len(new) == 2)[0] == free[:2]
