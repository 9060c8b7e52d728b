"""VQ tokenizer: architecture/key layout of the official configs, and numerics against a plain
functional re-implementation written from docs/llamagen.md ("VQ tokenizer")."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linegen.workers.models.config import VQ8, VQ16, VQConfig
from linegen.workers.models.vq import VQModel, to_uint8

SMALL = VQConfig(codebook_size=64, codebook_embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)
# Three levels, two res blocks, 8 groups: exercises a middle level, nin_shortcut and real grouping.
SMALL3 = VQConfig(codebook_size=64, codebook_embed_dim=8, z_channels=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, norm_groups=8)


def randomized(cfg: VQConfig, *, with_encoder: bool = True, seed: int = 0) -> VQModel:
    """A model whose every tensor is random, so a wrong key or a skipped op changes the output."""
    torch.manual_seed(seed)
    model = VQModel(cfg, with_encoder=with_encoder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "quantize.embedding.weight":
                # Rows of very different norms: only the normalised codebook gives the right answer.
                p.copy_(torch.randn_like(p) * torch.empty(p.shape[0], 1).uniform_(0.1, 10))
    return model.eval()


# ---------------------------------------------------------------- reference (plain functional ops)

def swish(x):
    return x * torch.sigmoid(x)


def conv(x, sd, p, **kw):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], **kw)


def group_norm(x, sd, p, groups):
    return F.group_norm(x, groups, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def ref_res(x, sd, p, g):
    h = conv(swish(group_norm(x, sd, p + ".norm1", g)), sd, p + ".conv1", padding=1)
    h = conv(swish(group_norm(h, sd, p + ".norm2", g)), sd, p + ".conv2", padding=1)
    if x.shape[1] != h.shape[1]:
        x = conv(x, sd, p + ".nin_shortcut")
    return x + h


def ref_attn(x, sd, p, g):
    b, c, hh, ww = x.shape
    h = group_norm(x, sd, p + ".norm", g)
    q, k, v = (conv(h, sd, f"{p}.{n}").reshape(b, c, hh * ww) for n in "qkv")
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=-1)
    o = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
    return x + conv(o, sd, p + ".proj_out")


def ref_mid(h, sd, p, g):
    h = ref_res(h, sd, p + ".0", g)
    h = ref_attn(h, sd, p + ".1", g)
    return ref_res(h, sd, p + ".2", g)


def ref_decode(sd, cfg: VQConfig, indices, grid):
    g, n = cfg.norm_groups, len(cfg.ch_mult)
    emb = sd["quantize.embedding.weight"]
    emb = emb / emb.norm(dim=1, keepdim=True)
    b = indices.shape[0]
    z = torch.zeros(b, emb.shape[1], grid, grid, dtype=emb.dtype)
    for bi in range(b):
        for i in range(grid):
            for j in range(grid):
                z[bi, :, i, j] = emb[indices[bi, i * grid + j]]
    h = conv(z, sd, "post_quant_conv")
    h = conv(h, sd, "decoder.conv_in", padding=1)
    h = ref_mid(h, sd, "decoder.mid", g)
    for lvl in range(n):  # lowest resolution first
        for r in range(cfg.num_res_blocks + 1):
            h = ref_res(h, sd, f"decoder.conv_blocks.{lvl}.res.{r}", g)
            if lvl == 0:
                h = ref_attn(h, sd, f"decoder.conv_blocks.{lvl}.attn.{r}", g)
        if lvl < n - 1:
            h = h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            h = conv(h, sd, f"decoder.conv_blocks.{lvl}.upsample.conv", padding=1)
    h = swish(group_norm(h, sd, "decoder.norm_out", g))
    return conv(h, sd, "decoder.conv_out", padding=1)


def ref_encode_latent(sd, cfg: VQConfig, x):
    g, n = cfg.norm_groups, len(cfg.ch_mult)
    h = conv(x, sd, "encoder.conv_in", padding=1)
    for lvl in range(n):
        for r in range(cfg.num_res_blocks):
            h = ref_res(h, sd, f"encoder.conv_blocks.{lvl}.res.{r}", g)
            if lvl == n - 1:
                h = ref_attn(h, sd, f"encoder.conv_blocks.{lvl}.attn.{r}", g)
        if lvl < n - 1:
            h = torch.cat([h, torch.zeros_like(h[:, :, :1])], dim=2)  # pad bottom
            h = torch.cat([h, torch.zeros_like(h[:, :, :, :1])], dim=3)  # pad right
            h = conv(h, sd, f"encoder.conv_blocks.{lvl}.downsample.conv", stride=2)
    h = ref_mid(h, sd, "encoder.mid", g)
    h = conv(swish(group_norm(h, sd, "encoder.norm_out", g)), sd, "encoder.conv_out", padding=1)
    return conv(h, sd, "quant_conv")


# ---------------------------------------------------------------- official layouts

def res_keys(p, cin, cout):
    keys = {f"{p}.norm1.weight": [cin], f"{p}.norm1.bias": [cin],
            f"{p}.conv1.weight": [cout, cin, 3, 3], f"{p}.conv1.bias": [cout],
            f"{p}.norm2.weight": [cout], f"{p}.norm2.bias": [cout],
            f"{p}.conv2.weight": [cout, cout, 3, 3], f"{p}.conv2.bias": [cout]}
    if cin != cout:
        keys |= {f"{p}.nin_shortcut.weight": [cout, cin, 1, 1], f"{p}.nin_shortcut.bias": [cout]}
    return keys


def attn_keys(p, c):
    keys = {f"{p}.norm.weight": [c], f"{p}.norm.bias": [c]}
    for n in ("q", "k", "v", "proj_out"):
        keys |= {f"{p}.{n}.weight": [c, c, 1, 1], f"{p}.{n}.bias": [c]}
    return keys


def conv_keys(p, cout, cin, k):
    return {f"{p}.weight": [cout, cin, k, k], f"{p}.bias": [cout]}


def official_decoder_keys(level_channels: list[int]) -> dict[str, list[int]]:
    """Decoder-side keys (docs/llamagen.md, "VQ state-dict keys"); level_channels lowest resolution first."""
    top = level_channels[0]
    keys = {"quantize.embedding.weight": [16384, 8], "quantize.codebook_used": [65536]}
    keys |= conv_keys("post_quant_conv", 256, 8, 1) | conv_keys("decoder.conv_in", top, 256, 3)
    keys |= res_keys("decoder.mid.0", top, top) | attn_keys("decoder.mid.1", top) | res_keys("decoder.mid.2", top, top)
    cin = top
    for i, c in enumerate(level_channels):
        for r in range(3):
            keys |= res_keys(f"decoder.conv_blocks.{i}.res.{r}", cin, c)
            cin = c
            if i == 0:
                keys |= attn_keys(f"decoder.conv_blocks.{i}.attn.{r}", c)
        if i < len(level_channels) - 1:
            keys |= conv_keys(f"decoder.conv_blocks.{i}.upsample.conv", c, c, 3)
    keys |= {"decoder.norm_out.weight": [128], "decoder.norm_out.bias": [128]}
    return keys | conv_keys("decoder.conv_out", 3, 128, 3)


def shapes(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def millions(module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)


def test_vq16_decoder_keys_match_official_layout():
    with torch.device("meta"):
        model = VQModel(VQ16)
    assert shapes(model) == official_decoder_keys([512, 256, 256, 128, 128])
    assert model.state_dict()["decoder.conv_blocks.1.res.0.nin_shortcut.weight"].shape == (256, 512, 1, 1)
    assert sum(p.numel() for p in model.decoder.parameters()) == 42_449_795  # spec: "42.5 M"
    assert VQ16.downsample == 16


def test_vq8_decoder_keys_match_official_layout():
    with torch.device("meta"):
        model = VQModel(VQ8)
    assert shapes(model) == official_decoder_keys([512, 256, 256, 128])
    assert VQ8.downsample == 8


def test_vq16_encoder_keys_and_sizes():
    with torch.device("meta"):
        model = VQModel(VQ16, with_encoder=True)
        vq8 = VQModel(VQ8, with_encoder=True)
    enc = {k: v for k, v in shapes(model).items() if k.startswith(("encoder.", "quant_conv."))}
    expected = conv_keys("encoder.conv_in", 128, 3, 3)
    for lvl, (cin, cout) in enumerate([(128, 128), (128, 128), (128, 256), (256, 256), (256, 512)]):
        for r in range(2):
            expected |= res_keys(f"encoder.conv_blocks.{lvl}.res.{r}", cin if r == 0 else cout, cout)
            if lvl == 4:
                expected |= attn_keys(f"encoder.conv_blocks.{lvl}.attn.{r}", cout)
        if lvl < 4:
            expected |= conv_keys(f"encoder.conv_blocks.{lvl}.downsample.conv", cout, cout, 3)
    expected |= res_keys("encoder.mid.0", 512, 512) | attn_keys("encoder.mid.1", 512) | res_keys("encoder.mid.2", 512, 512)
    expected |= {"encoder.norm_out.weight": [512], "encoder.norm_out.bias": [512]}
    expected |= conv_keys("encoder.conv_out", 256, 512, 3) | conv_keys("quant_conv", 8, 256, 1)
    assert enc == expected
    assert (millions(model.encoder), millions(model), millions(vq8)) == (29.3, 71.9, 70.1)


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("cfg,grid", [(SMALL, 4), (SMALL, 3), (SMALL3, 3)])
def test_decode_code_shape(cfg, grid):
    model = randomized(cfg, with_encoder=False)
    idx = torch.randint(0, cfg.codebook_size, (2, grid * grid))
    with torch.no_grad():
        out = model.decode_code(idx, grid)
        inferred = model.decode_code(idx)
    side = grid * cfg.downsample
    assert out.shape == (2, 3, side, side) and out.dtype == torch.float32
    torch.testing.assert_close(inferred, out)


def test_decode_code_rejects_non_square():
    model = randomized(SMALL, with_encoder=False)
    with pytest.raises(ValueError):
        model.decode_code(torch.zeros(1, 12, dtype=torch.long), 4)


@pytest.mark.parametrize("cfg", [SMALL, SMALL3], ids=["small", "small3"])
def test_decode_code_matches_reference(cfg):
    model = randomized(cfg, with_encoder=False, seed=1).double()
    sd = model.state_dict()
    torch.manual_seed(2)
    grid = 4
    idx = torch.randint(0, cfg.codebook_size, (2, grid * grid))
    with torch.no_grad():
        got = model.decode_code(idx, grid)
        want = ref_decode(sd, cfg, idx, grid)
    assert got.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Token order matters: a transposed grid decodes differently.
    transposed = idx.reshape(2, grid, grid).transpose(1, 2).reshape(2, -1)
    with torch.no_grad():
        assert not torch.allclose(model.decode_code(transposed, grid), want, atol=1e-3)


def test_decode_code_float32_close_to_float64():
    model = randomized(SMALL3, with_encoder=False, seed=3)
    idx = torch.randint(0, SMALL3.codebook_size, (1, 9))
    with torch.no_grad():
        f32 = model.decode_code(idx, 3)
        f64 = ref_decode({k: v.double() for k, v in model.state_dict().items()}, SMALL3, idx, 3)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-4)


def test_decode_code_bfloat16_runs():
    model = randomized(SMALL, with_encoder=False, seed=4)
    idx = torch.randint(0, SMALL.codebook_size, (2, 16))
    with torch.no_grad():
        f32 = model.decode_code(idx, 4)
        bf16 = model.to(torch.bfloat16).decode_code(idx, 4)
    assert bf16.dtype == torch.bfloat16 and bf16.shape == f32.shape
    assert (bf16.float() - f32).abs().max() < 0.1 * f32.abs().max()


@pytest.mark.parametrize("cfg", [SMALL, SMALL3], ids=["small", "small3"])
def test_encode_picks_nearest_normalised_code(cfg):
    model = randomized(cfg, with_encoder=True, seed=5).double()
    sd = model.state_dict()
    torch.manual_seed(6)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        codes = model.encode(x)
        latent = ref_encode_latent(sd, cfg, x)  # [B, D, h, w]
    b, _, h, w = latent.shape
    assert codes.shape == (b, h * w) and codes.dtype == torch.long

    emb = sd["quantize.embedding.weight"]
    unit = emb / emb.norm(dim=1, keepdim=True)
    want, raw_nearest = torch.empty(b, h * w, dtype=torch.long), torch.empty(b, h * w, dtype=torch.long)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                v = latent[bi, :, i, j]
                want[bi, i * w + j] = ((unit - v / v.norm()) ** 2).sum(1).argmin()
                raw_nearest[bi, i * w + j] = ((emb - v) ** 2).sum(1).argmin()
    assert torch.equal(codes, want)
    assert not torch.equal(raw_nearest, want)  # the setup can tell a missing normalisation apart


def test_encode_needs_encoder():
    with pytest.raises(RuntimeError):
        randomized(SMALL, with_encoder=False).encode(torch.zeros(1, 3, 8, 8))


def test_to_uint8_values():
    # value -> expected byte: clamp(127.5 x + 128, 0, 255), truncated
    cases = {
        -1.0: 0, 1.0: 255, 0.0: 128,
        -2.0: 0, 2.0: 255, -1.5: 0, 1.0001: 255,
        0.5: 191,        # 191.75: truncation, not rounding (192)
        -0.5: 64,        # 64.25
        0.99: 254,       # 254.225
        1 / 255: 128,    # 128.5 -> 128
        -0.999: 0,       # 0.6275
        -0.99: 1,        # 1.775
        -1 / 255: 127,   # 127.5 -> 127
    }
    values = torch.tensor(list(cases), dtype=torch.float32)
    expected = torch.tensor(list(cases.values()), dtype=torch.uint8)
    # Channel c holds value + a channel offset pattern to check the NHWC layout too.
    x = torch.stack([values, values.flip(0), torch.zeros_like(values)]).reshape(1, 3, 2, -1)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 2, len(cases) // 2, 3)
    assert torch.equal(out[..., 0].flatten(), expected)
    assert torch.equal(out[..., 1].flatten(), expected.flip(0))
    assert torch.all(out[..., 2] == 128)


def test_to_uint8_accepts_bfloat16_and_batches():
    x = torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = to_uint8(x.to(torch.bfloat16))
    want = torch.clamp(127.5 * x.to(torch.bfloat16).float() + 128.0, 0, 255).floor().to(torch.uint8)
    assert torch.equal(out, want.permute(0, 2, 3, 1))
    assert out.numpy().shape == (2, 4, 5, 3)
    assert math.isclose(float(out.max()), 255) and float(out.min()) == 0
