"""Document masking of packed windows (zer02llm.model.masking) against independent references.

The main reference is the obvious one: each document of a packed window run through the model on
its own must give the logits the packed window gives at that document's positions. Without the
rotary restart a document keeps its window positions, so its reference is the document alone at
positions start..end-1 (a from-scratch loop here); RoPE scores depend only on relative positions,
so that equals the document alone at 0..len-1 up to rounding, which the tests check too.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from zer02llm.config import ModelConfig, MoEConfig
from zer02llm.model import IGNORE_INDEX, Transformer, document_ids, document_positions
from zer02llm.model import masking
from zer02llm.model.moe import MoEFeedForward

from conftest import randomize

BOS, EOS, VOCAB = 1, 2, 97


def small_cfg(kind: str = "dense", **overrides) -> ModelConfig:
    values = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0)
    if kind == "moe":
        values.update(num_experts=4, experts_per_token=2, num_shared_experts=1, expert_hidden_dim=24)
    values.update(overrides)
    return (MoEConfig if kind == "moe" else ModelConfig)(**values)


def build(impl: str = "sdpa", dtype: torch.dtype = torch.float64, kind: str = "dense", **overrides) -> Transformer:
    torch.manual_seed(0)
    model = randomize(Transformer(small_cfg(kind, attention=impl, **overrides)))
    with torch.no_grad():  # randomize() leaves the stacked expert weights at the 0.02 init
        for module in model.modules():
            if isinstance(module, MoEFeedForward):
                for p in (module.gate_proj, module.up_proj, module.down_proj):
                    p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-2]))
    return model.to(dtype).eval()


def text(n: int, gen: torch.Generator, low: int = 3, high: int = VOCAB) -> list[int]:
    return torch.randint(low, high, (n,), generator=gen).tolist()


def packed_windows(seed: int = 0) -> tuple[torch.Tensor, list[list[tuple[int, int]]]]:
    """Two windows of 19 tokens cut from packed documents, and the (start, end) of every document in
    them, known from the construction (not from document_ids). Row 0 opens inside a document (no bos:
    its tail, then eos) and ends inside one; row 1 opens on a bos and holds a bos + eos document."""
    gen = torch.Generator().manual_seed(seed)
    rows = [
        [text(2, gen) + [EOS], [BOS, *text(3, gen), EOS], [BOS, *text(5, gen), EOS], [BOS, *text(3, gen)]],
        [[BOS, *text(4, gen), EOS], [BOS, EOS], [BOS, *text(7, gen), EOS], [BOS, *text(1, gen)]],
    ]
    tokens, spans = [], []
    for segments in rows:
        bounds, start = [], 0
        for segment in segments:
            bounds.append((start, start + len(segment)))
            start += len(segment)
        tokens.append(sum(segments, []))
        spans.append(bounds)
    assert {len(row) for row in tokens} == {19}
    return torch.tensor(tokens), spans


# --------------------------------------------------------------------------------------------------
# a from-scratch forward with explicit rotary positions (dense model, one sequence, plain causal)


def ref_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x (T, hd): the pair (x[i], x[i + hd/2]) as a complex number, turned by position * theta^(-2i/hd)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    angles = positions.double()[:, None] * freqs[None, :]
    z = torch.complex(x[:, :half], x[:, half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def ref_logits(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """tokens (T,) at rotary positions (T,), every token attending to itself and all before it."""
    cfg = model.cfg
    hd, H, group = cfg.head_dim, cfg.n_heads, cfg.n_heads // cfg.n_kv_heads
    w = {name: p.detach().double() for name, p in model.named_parameters()}
    w["lm_head.weight"] = model.lm_head.weight.detach().double()  # tied: not listed twice

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w[name]

    T = len(tokens)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    x = w["tok_embeddings.weight"][tokens]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        h_in = norm(x, p + "attn_norm.weight")
        heads = []
        for h in range(H):
            kv = slice((h // group) * hd, (h // group + 1) * hd)
            q = ref_rope(h_in @ w[p + "attn.q_proj.weight"][h * hd:(h + 1) * hd].T, positions, cfg.rope_theta)
            k = ref_rope(h_in @ w[p + "attn.k_proj.weight"][kv].T, positions, cfg.rope_theta)
            v = h_in @ w[p + "attn.v_proj.weight"][kv].T
            scores = (q @ k.T / math.sqrt(hd)).masked_fill(future, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v)
        x = x + torch.cat(heads, dim=-1) @ w[p + "attn.o_proj.weight"].T
        f_in = norm(x, p + "ffn_norm.weight")
        gate = f_in @ w[p + "ffn.gate_proj.weight"].T
        x = x + (F.silu(gate) * (f_in @ w[p + "ffn.up_proj.weight"].T)) @ w[p + "ffn.down_proj.weight"].T
    return norm(x, "norm.weight") @ w["lm_head.weight"].T


# --------------------------------------------------------------------------------------------------
# 1. the helpers against loops


def test_document_ids_and_positions_match_a_loop():
    tokens, _ = packed_windows()
    tokens = torch.cat([tokens, torch.tensor([[BOS] * 19]), torch.full((1, 19), 5)])  # all bos; no bos at all
    ids, positions = document_ids(tokens, BOS), document_positions(document_ids(tokens, BOS))
    for b, row in enumerate(tokens.tolist()):
        doc, pos = 0, -1
        for t, token in enumerate(row):
            if token == BOS:
                doc, pos = doc + 1, -1
            pos += 1
            assert (ids[b, t].item(), positions[b, t].item()) == (doc, pos), (b, t)
    assert ids.dtype == positions.dtype == torch.int64
    # a window that opens mid-document: its leading tokens are document 0, at positions 0, 1, 2
    assert ids[0, :4].tolist() == [0, 0, 0, 1] and positions[0, :4].tolist() == [0, 1, 2, 0]


def test_dense_mask_is_block_diagonal_causal():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = masking.document_causal_mask(doc_ids)
    assert mask.shape == (1, 1, 6, 6)
    for i in range(6):
        for j in range(6):
            assert mask[0, 0, i, j].item() == (j <= i and doc_ids[0, i] == doc_ids[0, j]), (i, j)


# --------------------------------------------------------------------------------------------------
# 2. packed window with the mask == every document on its own


@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("restart", [True, False], ids=["restart", "window-positions"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_packed_window_matches_each_document_alone(impl, restart, kind):
    model = build(impl, kind=kind)
    tokens, spans = packed_windows()
    doc_ids = document_ids(tokens, BOS)
    positions = document_positions(doc_ids) if restart else None
    with torch.no_grad():
        packed = model(tokens, doc_ids=doc_ids, positions=positions).logits
        unmasked = model(tokens).logits
    assert packed.dtype == torch.float64
    for b, bounds in enumerate(spans):
        for start, end in bounds:
            with torch.no_grad():
                alone = model(tokens[b:b + 1, start:end]).logits[0]
            torch.testing.assert_close(packed[b, start:end], alone, rtol=1e-10, atol=1e-10)
            if kind == "dense":
                # the from-scratch reference at the positions the packed window used
                used = torch.arange(end - start) if restart else torch.arange(start, end)
                torch.testing.assert_close(packed[b, start:end], ref_logits(model, tokens[b, start:end], used),
                                           rtol=1e-10, atol=1e-10)
    # every document after the first of a row sees fewer tokens than without the mask: not vacuous
    later = [slice(s, e) for s, e in spans[0][1:]]
    assert min((packed[0, sl] - unmasked[0, sl]).abs().amax().item() for sl in later) > 1e-2


def test_positions_without_mask_match_the_reference():
    """The positions argument alone (no document mask): RoPE at the given positions, plain causal."""
    model = build("sdpa")
    tokens, _ = packed_windows()
    positions = document_positions(document_ids(tokens, BOS))
    with torch.no_grad():
        logits = model(tokens, positions=positions).logits
        default = model(tokens).logits
    for b in range(2):
        torch.testing.assert_close(logits[b], ref_logits(model, tokens[b], positions[b]), rtol=1e-10, atol=1e-10)
    assert (logits - default).abs().amax() > 1e-2  # restarted positions change cross-document scores


def test_window_opening_mid_document_is_its_own_document():
    """Tokens before the first bos (a document continued from the previous window) attend only
    among themselves, and nothing after the first bos sees them."""
    model = build("sdpa")
    gen = torch.Generator().manual_seed(3)
    tail, doc = text(5, gen) + [EOS], [BOS, *text(6, gen), EOS]
    tokens = torch.tensor([tail + doc])
    doc_ids = document_ids(tokens, BOS)
    assert doc_ids[0].tolist() == [0] * 6 + [1] * 8
    with torch.no_grad():
        packed = model(tokens, doc_ids=doc_ids).logits[0]
        torch.testing.assert_close(packed[:6], model(tokens[:, :6]).logits[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(packed[6:], model(tokens[:, 6:]).logits[0], rtol=1e-10, atol=1e-10)
        # a different tail leaves the document after it untouched
        other = tokens.clone()
        other[0, :5] = torch.tensor(text(5, gen))
        torch.testing.assert_close(model(other, doc_ids=document_ids(other, BOS)).logits[0, 6:], packed[6:],
                                   rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# 3. SDPA with the mask == the math path with the mask, forward and backward; gradients stay inside documents


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
@pytest.mark.parametrize("restart", [True, False], ids=["restart", "window-positions"])
def test_sdpa_mask_matches_math_mask_logits_and_gradients(n_kv_heads, restart):
    tokens, _ = packed_windows(seed=1)
    targets = torch.roll(tokens, -1, dims=1)
    doc_ids = document_ids(tokens, BOS)
    positions = document_positions(doc_ids) if restart else None
    results = []
    for impl in ("sdpa", "math"):
        model = build(impl, dtype=torch.float32, n_kv_heads=n_kv_heads).train()  # dropout 0: deterministic
        out = model(tokens, targets, doc_ids=doc_ids, positions=positions)
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (out_s, grads_s), (out_m, grads_m) = results
    torch.testing.assert_close(out_s.logits, out_m.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_s.loss, out_m.loss, rtol=1e-5, atol=1e-6)
    for name in grads_m:
        assert grads_s[name].abs().amax() > 0, name  # gradients reach every parameter through the mask
        torch.testing.assert_close(grads_s[name], grads_m[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_loss_on_one_document_sends_no_gradient_to_another(impl):
    """Documents with disjoint vocabularies: a loss on document B's targets reaches the embedding rows
    of document A's tokens only through attention, which the mask cuts (untied head, so the LM head
    does not touch those rows either)."""
    gen = torch.Generator().manual_seed(4)
    doc_a, doc_b = [BOS, *text(7, gen, 10, 40), EOS], [BOS, *text(9, gen, 50, 90), EOS]
    tokens = torch.tensor([doc_a + doc_b])
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[0, len(doc_a):-1] = tokens[0, len(doc_a) + 1:]  # only document B's next tokens
    rows_a = sorted(set(doc_a[1:-1]))

    def embedding_grad(doc_ids):
        model = build(impl, tie_embeddings=False).train()
        model(tokens, targets, doc_ids=doc_ids).loss.backward()
        return model.tok_embeddings.weight.grad

    masked = embedding_grad(document_ids(tokens, BOS))
    assert torch.count_nonzero(masked[rows_a]) == 0
    assert masked[sorted(set(doc_b[1:-1]))].abs().amax() > 0
    assert embedding_grad(None)[rows_a].abs().amax() > 1e-6  # without the mask they do get one


# --------------------------------------------------------------------------------------------------
# 4. the fast path stays as it was


def test_without_doc_ids_attention_is_plain_causal_sdpa(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    model = build("sdpa")
    tokens, _ = packed_windows()
    with torch.no_grad():
        plain = model(tokens).logits
        assert calls == [(None, True)] * 2  # no mask tensor: the flash / efficient kernels stay available
        calls.clear()
        one_document = model(tokens, doc_ids=torch.zeros_like(tokens)).logits
    assert len(calls) == 2 and all(mask is not None and not causal for mask, causal in calls)
    torch.testing.assert_close(one_document, plain, rtol=1e-12, atol=1e-12)  # one document == causal


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_document_masked_forward_has_no_graph_breaks(impl):
    torch._dynamo.reset()
    model = build(impl, dtype=torch.float32).train()
    tokens, _ = packed_windows()
    doc_ids = document_ids(tokens, BOS)
    try:
        explanation = torch._dynamo.explain(model)(tokens, tokens, doc_ids=doc_ids,
                                                   positions=document_positions(doc_ids))
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_doc_ids_are_refused_with_a_cache_or_a_wrong_shape():
    model = build("sdpa")
    tokens, _ = packed_windows()
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache"):
        model(tokens, doc_ids=document_ids(tokens, BOS), cache=model.new_cache(2))
    with torch.no_grad(), pytest.raises(ValueError, match="positions has shape"):
        model(tokens, positions=torch.zeros(2, 5, dtype=torch.long))


def test_cpu_default_is_the_dense_mask_and_flex_refuses_math():
    model = build("math")
    doc_ids = document_ids(packed_windows()[0], BOS)
    assert isinstance(model._document_mask(doc_ids), torch.Tensor)
    model.use_flex_attention = True
    with pytest.raises(ValueError, match="use_flex_attention=True needs"):
        model._document_mask(doc_ids)


# --------------------------------------------------------------------------------------------------
# 5. flex_attention == the math path (on CPU torch compiles its forward: float32, no backward)


@pytest.mark.skipif(not masking.HAS_FLEX, reason="this torch has no flex_attention")
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="compiling flex_attention on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_flex_matches_math_on_cpu():
    torch._dynamo.reset()
    tokens, _ = packed_windows(seed=2)
    doc_ids = document_ids(tokens, BOS)
    positions = document_positions(doc_ids)
    flex = build("sdpa", dtype=torch.float32)
    flex.use_flex_attention = True
    assert isinstance(flex._document_mask(doc_ids), masking.BlockMask)
    reference = build("math", dtype=torch.float32)
    try:
        with torch.no_grad():
            got = flex(tokens, doc_ids=doc_ids, positions=positions).logits
            expected = reference(tokens, doc_ids=doc_ids, positions=positions).logits
            # inside a compiled model the block mask and flex_attention trace into one graph
            explanation = torch._dynamo.explain(flex)(tokens, doc_ids=doc_ids, positions=positions)
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert expected.abs().amax() > 1.0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
