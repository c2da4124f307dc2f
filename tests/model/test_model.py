"""Tests of the Transformer (zer02llm.model.transformer) against independent references.

Small shapes on CPU. Most tests re-draw the weights at unit scale (`randomize`): at the 0.02 init
the attention is nearly uniform and the logits nearly constant, so a comparison would pass for
almost any attention implementation.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from zer02llm.config import ModelConfig
from zer02llm.model import IGNORE_INDEX, Transformer
from zer02llm.model.transformer import apply_rope, rope_tables

from conftest import randomize

IMPLS = ("sdpa", "math")


def small_cfg(**overrides) -> ModelConfig:
    values = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=100.0)
    values.update(overrides)
    return ModelConfig(**values)


def build(impl: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0, random_weights: bool = True,
          **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(small_cfg(attention=impl, **overrides))
    if random_weights:
        randomize(model, seed)
    return model.to(dtype).eval()


def rand_tokens(batch: int, length: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# 1. causality


@pytest.mark.parametrize("impl", IMPLS)
def test_future_tokens_never_change_past_logits(impl):
    model = build(impl)
    tokens = rand_tokens(2, 12)
    with torch.no_grad():
        base = model(tokens).logits
        for t in (1, 5, 11):
            changed = tokens.clone()
            changed[:, t:] = (changed[:, t:] + 1 + rand_tokens(2, 12 - t, 96, seed=t)) % 97  # every one differs
            assert (changed[:, t:] != tokens[:, t:]).all()
            logits = model(changed).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-5)
            # the change does reach position t and later, so the comparison above is not vacuous
            assert (logits[:, t:] - base[:, t:]).abs().amax() > 1e-2


# --------------------------------------------------------------------------------------------------
# 2. SDPA path == plain-math path, forward and backward


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 1), (4, 2), (4, 4)], ids=["mqa", "gqa", "mha"])
def test_sdpa_matches_math_logits_and_gradients(n_heads, n_kv_heads):
    sdpa = build("sdpa", n_heads=n_heads, n_kv_heads=n_kv_heads, dropout=0.0)
    math_model = Transformer(dataclasses.replace(sdpa.cfg, attention="math"))
    math_model.load_state_dict(sdpa.state_dict())
    tokens, targets = rand_tokens(2, 16), rand_tokens(2, 16, seed=2)
    outputs = []
    for model in (sdpa, math_model):
        model.train()  # the training path; dropout is 0 so it is deterministic
        model.zero_grad()
        out = model(tokens, targets)
        out.loss.backward()
        outputs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_s, grads_s), (out_m, grads_m) = outputs
    torch.testing.assert_close(out_s.logits, out_m.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_s.loss, out_m.loss, rtol=1e-5, atol=1e-6)
    assert grads_s.keys() == grads_m.keys()
    for name in grads_s:
        assert grads_s[name].abs().amax() > 0, name
        torch.testing.assert_close(grads_s[name], grads_m[name], rtol=1e-4, atol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------
# 3. a from-scratch reference forward


def ref_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def ref_swiglu(x: torch.Tensor, w_gate, w_up, w_down) -> torch.Tensor:
    gate = x @ w_gate.T
    return (gate * torch.sigmoid(gate) * (x @ w_up.T)) @ w_down.T


def ref_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x (T, head_dim): the pair (x[i], x[i + d/2]) is the complex number x[i] + i x[i + d/2],
    multiplied by exp(i * position * theta^(-2i/d))."""
    d = x.shape[-1]
    half = d // 2
    freqs = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[:, :half].double(), x[:, half:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def ref_attention(x: torch.Tensor, attn, cfg: ModelConfig) -> torch.Tensor:
    """x (T, dim) of one sequence; explicit loops over heads and an explicit masked softmax."""
    T = x.shape[0]
    hd, H, KV = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    group = H // KV
    wq, wk, wv, wo = (w.detach().double() for w in
                      (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight))
    positions = torch.arange(T)
    heads = []
    for h in range(H):
        kv = h // group
        q = ref_rope(x @ wq[h * hd:(h + 1) * hd].T, positions, cfg.rope_theta)
        k = ref_rope(x @ wk[kv * hd:(kv + 1) * hd].T, positions, cfg.rope_theta)
        v = x @ wv[kv * hd:(kv + 1) * hd].T
        scores = q @ k.T / math.sqrt(hd)
        out = torch.empty(T, hd, dtype=torch.float64)
        for i in range(T):
            s = scores[i, :i + 1]  # causal: keys 0..i
            p = torch.exp(s - s.max())
            p = p / p.sum()
            out[i] = p @ v[:i + 1]
        heads.append(out)
    return torch.cat(heads, dim=-1) @ wo.T


def ref_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    cfg = model.cfg
    emb = model.tok_embeddings.weight.detach().double()
    head = model.lm_head.weight.detach().double()
    logits = []
    for seq in tokens:
        x = emb[seq]
        for layer in model.layers:
            h = x + ref_attention(ref_rmsnorm(x, layer.attn_norm.weight.detach().double(), cfg.norm_eps),
                                  layer.attn, cfg)
            ffn = layer.ffn
            x = h + ref_swiglu(ref_rmsnorm(h, layer.ffn_norm.weight.detach().double(), cfg.norm_eps),
                               ffn.gate_proj.weight.detach().double(), ffn.up_proj.weight.detach().double(),
                               ffn.down_proj.weight.detach().double())
        logits.append(ref_rmsnorm(x, model.norm.weight.detach().double(), cfg.norm_eps) @ head.T)
    return torch.stack(logits)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_naive_reference_float32(impl):
    """The architecture: float32 model against the float64 reference at float32 accuracy."""
    model = build(impl)
    tokens = rand_tokens(2, 10)
    with torch.no_grad():
        logits = model(tokens).logits
    expected = ref_forward(model, tokens)
    assert expected.abs().amax() > 1.0  # unit-scale logits: the tolerance below is meaningful
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_naive_reference_float64(impl):
    """A float64 model must compute in float64 end to end (the reference the other tests lean on)."""
    model = build(impl, dtype=torch.float64)
    tokens = rand_tokens(2, 10)
    with torch.no_grad():
        logits = model(tokens).logits
    expected = ref_forward(model, tokens)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-10, atol=1e-10)
    assert logits.dtype == torch.float64


@pytest.mark.parametrize("impl", IMPLS)
def test_hidden_states_through_the_head_are_forwards_logits(impl):
    """hidden_states() is forward without its LM head: the head applied gives forward's logits, and the
    float64 reference's."""
    model = build(impl)
    tokens = rand_tokens(2, 10)
    with torch.no_grad():
        hidden = model.hidden_states(tokens)
        logits = model(tokens).logits
    assert hidden.shape == (2, 10, model.cfg.dim)
    torch.testing.assert_close(model.lm_head(hidden), logits, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head(hidden).double(), ref_forward(model, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_hidden_states_with_a_mask_and_positions_equal_separate_forwards(impl):
    """Two pieces in one row, kept apart by the mask and each starting at position 0, read as if each ran
    alone through forward."""
    model = build(impl)
    first, second = rand_tokens(1, 6, seed=2), rand_tokens(1, 4, seed=3)
    tokens = torch.cat([first, second], dim=1)
    piece = torch.tensor([0] * 6 + [1] * 4)
    mask = (piece[:, None] == piece[None, :]) & torch.ones(10, 10, dtype=torch.bool).tril()
    positions = torch.cat([torch.arange(6), torch.arange(4)])[None]
    with torch.no_grad():
        logits = model.lm_head(model.hidden_states(tokens, positions, mask[None, None]))
        alone = torch.cat([model(first).logits, model(second).logits], dim=1)
    torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mask has shape"):
        model.hidden_states(tokens, positions, mask[None, None, :5])


# --------------------------------------------------------------------------------------------------
# 4. KV cache


@pytest.mark.parametrize("impl", IMPLS)
def test_kv_cache_token_by_token_matches_full_pass(impl):
    model = build(impl)
    tokens = rand_tokens(2, 14)
    with torch.no_grad():
        full = model(tokens).logits
        cache = model.new_cache(batch_size=2)
        pieces = [model(tokens[:, :4], cache=cache).logits]
        for t in range(4, 14):
            pieces.append(model(tokens[:, t:t + 1], cache=cache).logits)
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_kv_cache_multi_token_chunks_match_full_pass(impl):
    """A chunk of several tokens after a prefill needs the rectangular causal mask."""
    model = build(impl)
    tokens = rand_tokens(2, 15)
    with torch.no_grad():
        full = model(tokens).logits
        cache = model.new_cache(batch_size=2, max_len=15)
        pieces = [model(tokens[:, :5], cache=cache).logits,
                  model(tokens[:, 5:11], cache=cache).logits,
                  model(tokens[:, 11:12], cache=cache).logits,
                  model(tokens[:, 12:], cache=cache).logits]
    assert cache.length == 15
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


def test_kv_cache_overflow_raises():
    model = build()
    cache = model.new_cache(batch_size=1, max_len=6)
    with torch.no_grad():
        model(rand_tokens(1, 4), cache=cache)
        with pytest.raises(ValueError, match="KV cache"):
            model(rand_tokens(1, 3), cache=cache)


# --------------------------------------------------------------------------------------------------
# 5. rotary embeddings


def _rotate(x: torch.Tensor, position: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return apply_rope(x.view(1, 1, 1, -1), cos[position:position + 1], sin[position:position + 1]).view(-1)


def test_rope_dot_product_depends_only_on_relative_position():
    head_dim, theta = 16, 100.0
    cos, sin = rope_tables(head_dim, 256, theta)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=gen), torch.randn(head_dim, generator=gen)
    for m, n in [(0, 0), (3, 7), (10, 2), (40, 40)]:
        reference = _rotate(q, m, cos, sin) @ _rotate(k, n, cos, sin)
        for shift in (1, 17, 150):
            shifted = _rotate(q, m + shift, cos, sin) @ _rotate(k, n + shift, cos, sin)
            torch.testing.assert_close(shifted, reference, rtol=1e-5, atol=1e-5)
    # and the dot product does depend on the offset (the rotation is not the identity)
    dots = torch.stack([_rotate(q, m, cos, sin) @ _rotate(k, 0, cos, sin) for m in range(8)])
    assert dots.std() > 0.1 * dots.abs().mean()


def test_rope_preserves_norms_and_is_identity_at_position_zero():
    head_dim = 16
    cos, sin = rope_tables(head_dim, 64, 1e4)
    x = torch.randn(2, 3, 64, head_dim, generator=torch.Generator().manual_seed(0))
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])
    assert not torch.allclose(rotated[:, :, 1:], x[:, :, 1:], atol=1e-3)


def test_rope_tables_match_formula():
    head_dim, theta = 8, 1e4
    cos, sin = rope_tables(head_dim, 32, theta)
    pos = torch.arange(32, dtype=torch.float64)[:, None]
    freqs = theta ** (-2.0 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)
    angles = torch.cat([pos * freqs, pos * freqs], dim=-1)
    torch.testing.assert_close(cos.double(), angles.cos(), rtol=0, atol=1e-7)
    torch.testing.assert_close(sin.double(), angles.sin(), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# 6. grouped-query attention == multi-head attention with repeated K/V weights


def _expand_kv(weight: torch.Tensor, n_kv_heads: int, group: int, how: str) -> torch.Tensor:
    per_head = weight.view(n_kv_heads, -1, weight.shape[1])  # (KV, head_dim, dim)
    expanded = per_head.repeat_interleave(group, dim=0) if how == "interleave" else per_head.repeat(group, 1, 1)
    return expanded.reshape(-1, weight.shape[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_gqa_equals_mha_with_repeated_kv_weights(impl):
    gqa = build(impl, n_heads=4, n_kv_heads=2)
    tokens = rand_tokens(2, 12)

    def mha_logits(how: str) -> torch.Tensor:
        mha = Transformer(small_cfg(attention=impl, n_heads=4, n_kv_heads=4)).eval()
        state = gqa.state_dict()
        for key in list(state):
            if key.endswith(("k_proj.weight", "v_proj.weight")):
                state[key] = _expand_kv(state[key], 2, 2, how)  # query head h reads KV head h // 2
        mha.load_state_dict(state)
        with torch.no_grad():
            return mha(tokens).logits

    with torch.no_grad():
        expected = gqa(tokens).logits
    torch.testing.assert_close(mha_logits("interleave"), expected, rtol=1e-4, atol=1e-5)
    # the other grouping (head h reads KV head h % 2) gives another model: the test can tell them apart
    assert (mha_logits("tile") - expected).abs().amax() > 1e-2


# --------------------------------------------------------------------------------------------------
# 7. loss


@pytest.mark.parametrize("impl", IMPLS)
def test_loss_ignores_ignore_index_targets(impl):
    model = build(impl)
    tokens, targets = rand_tokens(2, 9), rand_tokens(2, 9, seed=5)
    targets[0, :3] = IGNORE_INDEX
    targets[1, 4] = IGNORE_INDEX
    targets[1, -1] = IGNORE_INDEX
    with torch.no_grad():
        out = model(tokens, targets)
    logits = out.logits.double()
    total, kept = 0.0, 0
    for b in range(2):
        for t in range(9):
            y = int(targets[b, t])
            if y == IGNORE_INDEX:
                continue
            row = logits[b, t]
            total += float(torch.log(torch.exp(row - row.max()).sum()) + row.max() - row[y])
            kept += 1
    assert kept == 18 - 5
    assert out.loss.item() == pytest.approx(total / kept, rel=1e-5)
    # ignored positions carry no weight whatever their target would have been
    other = targets.clone()
    other[targets == IGNORE_INDEX] = 0
    with torch.no_grad():
        assert model(tokens, other).loss.item() != pytest.approx(out.loss.item(), rel=1e-4)


def test_initial_loss_is_close_to_log_vocab():
    """Default width/depth at vocab 6400, dim 64, default init. With the tied head the logits are
    h . e_v with h the final-normed state (norm ~ sqrt(dim)) and e_v ~ N(0, 0.02^2): logit std
    0.02 * sqrt(64) = 0.16, so the expected loss is ln V + 0.16^2 / 2 = ln V + 0.013 (the input
    token's own logit, ~||e||^2 / rms(e) = 1.28, moves the log-sum-exp over 6400 tokens by < 1e-3)."""
    cfg = ModelConfig(vocab_size=6400, dim=64, max_seq_len=128)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    tokens = rand_tokens(4, 65, vocab=6400)
    with torch.no_grad():
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss.item()
    log_v = math.log(6400)
    assert abs(loss - log_v) < 0.1
    assert loss == pytest.approx(log_v + (0.02 ** 2 * 64) / 2, abs=0.02)


# --------------------------------------------------------------------------------------------------
# 8. tied embeddings, parameter count, SwiGLU width


def expected_num_params(cfg: ModelConfig) -> int:
    d, hd, H, KV, F_ = cfg.dim, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim
    attention = d * H * hd + 2 * d * KV * hd + H * hd * d  # q, k, v, o
    ffn = 3 * d * F_  # gate, up, down
    per_layer = attention + ffn + 2 * d  # + attn_norm, ffn_norm
    total = cfg.vocab_size * d + cfg.n_layers * per_layer + d  # + final norm
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * d
    return total


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_num_params_matches_formula(tie, n_kv_heads):
    cfg = small_cfg(n_kv_heads=n_kv_heads, tie_embeddings=tie, n_layers=3)
    model = Transformer(cfg)
    assert model.num_params() == expected_num_params(cfg)
    assert model.num_params(exclude_embeddings=True) == expected_num_params(cfg) - cfg.vocab_size * cfg.dim


def test_tied_embeddings_share_the_tensor():
    tied = Transformer(small_cfg(tie_embeddings=True))
    assert tied.lm_head.weight is tied.tok_embeddings.weight
    untied = Transformer(small_cfg(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_embeddings.weight
    assert untied.lm_head.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()
    assert not torch.equal(untied.lm_head.weight, untied.tok_embeddings.weight)


def test_default_model_size():
    """The default configuration is minimind's 26M model: 25,829,888 parameters with the tied head."""
    cfg = ModelConfig(max_seq_len=128)
    assert expected_num_params(cfg) == 25_829_888
    assert Transformer(cfg).num_params() == 25_829_888


@pytest.mark.parametrize("dim", [8, 32, 64, 96, 128, 192, 512, 768])
def test_ffn_dim_rule(dim):
    assert ModelConfig(dim=dim).ffn_dim == 64 * math.ceil(8 * dim / 3 / 64)
    assert ModelConfig(dim=dim).ffn_dim % 64 == 0 and ModelConfig(dim=dim).ffn_dim >= 8 * dim / 3
    assert ModelConfig(dim=dim, hidden_dim=100).ffn_dim == 100


def test_ffn_dim_512_is_1408():
    assert ModelConfig(dim=512).ffn_dim == 1408
    model = Transformer(small_cfg(dim=512, n_heads=8, n_kv_heads=2, n_layers=1))
    assert model.layers[0].ffn.gate_proj.weight.shape == (1408, 512)
    assert model.layers[0].ffn.down_proj.weight.shape == (512, 1408)


# --------------------------------------------------------------------------------------------------
# 9. initialisation


def test_init_scales_residual_projections():
    n_layers = 4
    torch.manual_seed(0)
    model = Transformer(small_cfg(dim=256, n_heads=4, n_kv_heads=4, n_layers=n_layers, vocab_size=512))
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        expected = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        assert p.numel() >= 65536, name  # a standard error of the std below 0.3%
        assert p.std().item() == pytest.approx(expected, rel=0.03), name
        assert abs(p.mean().item()) < 0.02 * expected, name


# --------------------------------------------------------------------------------------------------
# 10. length limit and bfloat16


def test_sequence_longer_than_max_seq_len_raises():
    model = build(max_seq_len=16)
    with torch.no_grad():
        assert model(rand_tokens(1, 16)).logits.shape == (1, 16, 97)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(rand_tokens(1, 17))
        cache = model.new_cache(1)
        model(rand_tokens(1, 10), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(rand_tokens(1, 7), cache=cache)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_forward_is_finite_and_close_to_float32(impl):
    model = build(impl)
    tokens = rand_tokens(2, 16)
    with torch.no_grad():
        ref = model(tokens).logits
        model.to(torch.bfloat16)
        out = model(tokens, tokens).logits
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert out.dtype == torch.float32  # logits are upcast for the loss
    assert torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 0.05
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.8


# --------------------------------------------------------------------------------------------------
# 11. torch.compile


@pytest.mark.parametrize("impl", IMPLS)
def test_training_forward_has_no_graph_breaks(impl):
    torch._dynamo.reset()
    model = build(impl, random_weights=False).train()
    tokens, targets = rand_tokens(2, 16), rand_tokens(2, 16, seed=2)
    try:
        explanation = torch._dynamo.explain(model)(tokens, targets)
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# --------------------------------------------------------------------------------------------------
# 12. gradient check


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_blocks_on_embeddings(impl):
    cfg_kw = dict(vocab_size=11, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=8, attention=impl)
    torch.manual_seed(0)
    model = randomize(Transformer(ModelConfig(**cfg_kw))).double().eval()
    T = 4
    cos, sin = model.rope_cos[:T].double(), model.rope_sin[:T].double()

    def blocks(x: torch.Tensor) -> torch.Tensor:
        for layer in model.layers:
            x, _ = layer(x, cos, sin)
        return model.lm_head(model.norm(x))

    emb = model.tok_embeddings(torch.tensor([[1, 5, 2, 9]])).detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(blocks, (emb,), eps=1e-6, atol=1e-6, rtol=1e-4)
