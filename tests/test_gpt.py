"""The GPT computes what the LlamaGen spec says, and cached decoding matches the uncached forward."""
from __future__ import annotations

import pytest
import torch

import reference_gpt as ref
from linegen.workers.cache import Layout, make_policy
from linegen.workers.cache.kv import KVCache
from linegen.workers.models.config import GPTConfig, ModelSpec, VQConfig
from linegen.workers.models.gpt import GPT, precompute_rope_2d
from linegen.workers.models.checkpoint import init_random

GRID = 4
CFG_C2I = GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=96)
CFG_T2I = GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=96, cond="t2i", caption_dim=24, caption_tokens=6)


def make_gpt(cfg: GPTConfig, seed: int = 0) -> GPT:
    gpt = GPT(cfg)
    init_random(gpt, seed)
    # larger weights (x3) than the 0.02 init so attention is far from uniform and errors would show
    for p in gpt.parameters():
        p.data.mul_(3)
    if cfg.cond == "t2i":
        gpt.cls_embedding.uncond_embedding.normal_()
    return gpt.eval()


def test_rope_table_matches_spec_test_vector():
    table = precompute_rope_2d(grid=24, head_dim=64, prefix_len=1)
    assert table.shape == (577, 32, 2)
    assert torch.count_nonzero(table[0]) == 0  # condition row is zero, not identity
    pos = 27  # image token 26: row 1, col 2
    assert table[pos, 0].tolist() == pytest.approx([0.5403, 0.8415], abs=1e-4)
    assert table[pos, 1].tolist() == pytest.approx([0.8460, 0.5332], abs=1e-4)
    assert table[pos, 16].tolist() == pytest.approx([-0.4161, 0.9093], abs=1e-4)


@pytest.mark.parametrize("cond", ["c2i", "t2i"])
def test_logits_match_independent_reference(cond):
    cfg = CFG_C2I if cond == "c2i" else CFG_T2I
    gpt = make_gpt(cfg)
    sd = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (GRID * GRID - 1,), generator=g)
    if cond == "c2i":
        cond_in = torch.tensor([7])
        ref_cond = ref.embed_class(sd, 7)
        pad = None
    else:
        caption = torch.randn(cfg.caption_tokens, cfg.caption_dim, generator=g)
        pad = torch.tensor([False, False, True, True, True, True])  # left padding: 2 pad rows
        caption = caption * pad[:, None]
        cond_in = caption[None]
        ref_cond = ref.embed_caption(sd, caption)
    expected = ref.forward(sd, cfg.n_head, ref_cond, tokens, GRID, pad_mask=pad)
    with torch.no_grad():
        x = torch.cat([gpt.embed_condition(cond_in), gpt.embed_tokens(tokens[None])], dim=1)
        positions = torch.arange(x.shape[1])
        mask = None
        if pad is not None:
            S, C = x.shape[1], cfg.cls_token_num
            mask = torch.tril(torch.ones(S, S, dtype=torch.bool))
            mask[:, :C] &= pad[None]
            mask |= torch.eye(S, dtype=torch.bool)
        got = gpt(x, positions, GRID, mask=mask, last_only=False)[0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("cond", ["c2i", "t2i"])
def test_cached_decoding_matches_uncached_forward(cond):
    cfg = CFG_C2I if cond == "c2i" else CFG_T2I
    gpt = make_gpt(cfg, seed=3)
    C, N, B = cfg.cls_token_num, GRID * GRID, 3
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.vocab_size, (B, N), generator=g)
    if cond == "c2i":
        cond_in, pad = torch.tensor([1, 5, 1000]), None
    else:
        pad = torch.ones(B, C, dtype=torch.bool)
        pad[0, :3] = False
        pad[2, :] = False  # an all-padding prompt still works: the forced diagonal
        cond_in = torch.randn(B, C, cfg.caption_dim, generator=g) * pad[..., None]
    with torch.no_grad():
        prefix = gpt.embed_condition(cond_in)
        x = torch.cat([prefix, gpt.embed_tokens(tokens[:, :-1])], dim=1)
        S = x.shape[1]
        mask = torch.tril(torch.ones(S, S, dtype=torch.bool)).expand(B, 1, S, S).clone()
        if pad is not None:
            mask[:, 0, :, :C] &= pad[:, None, :]
            mask |= torch.eye(S, dtype=torch.bool)
        full = gpt(x, torch.arange(S), GRID, mask=mask, last_only=False)
        cache = KVCache(make_policy("full"), Layout(C, GRID), B, cfg.n_layer, cfg.n_head, cfg.head_dim,
                        torch.float32, torch.device("cpu"), prefix_mask=pad)
        steps = [gpt(prefix, torch.arange(C), GRID, cache)]
        cache.advance(C)
        for i in range(N - 1):
            steps.append(gpt(gpt.embed_tokens(tokens[:, i:i + 1]), torch.tensor([C + i]), GRID, cache))
            cache.advance(1)
    cached = torch.cat(steps, dim=1)
    assert torch.isfinite(cached).all()
    assert torch.allclose(cached, full[:, C - 1:], atol=1e-4, rtol=1e-4), (cached - full[:, C - 1:]).abs().max()


def test_ffn_sizes_match_llamagen_configs():
    from linegen.workers.models.config import gpt_config

    assert gpt_config("B").ffn_dim == 2048
    assert gpt_config("L").ffn_dim == 2816
    assert gpt_config("XL").ffn_dim == 3584
    assert gpt_config("XXL").ffn_dim == 4096
    assert gpt_config("3B").ffn_dim == 8704 and gpt_config("3B").head_dim == 100


def test_gpt_b_parameter_count_and_keys():
    from linegen.workers.models.config import gpt_config

    with torch.device("meta"):
        gpt = GPT(gpt_config("B"))
    n = sum(p.numel() for p in gpt.parameters())
    assert abs(n - 110.9e6) < 0.1e6
    sd = gpt.state_dict()
    assert tuple(sd["layers.0.attention.wqkv.weight"].shape) == (2304, 768)
    assert tuple(sd["cls_embedding.embedding_table.weight"].shape) == (1001, 768)
    assert tuple(sd["output.weight"].shape) == (16384, 768)
