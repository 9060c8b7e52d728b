"""LlamaGen VQ tokenizer (docs/llamagen.md, "VQ tokenizer"): codes <-> images.

Module and attribute names mirror LlamaGen's `tokenizer/tokenizer_image/vq_model.py`, so that
the official `vq_ds16_c2i.pt` / `vq_ds8_c2i.pt` state dicts load with their own key names.
Generation only needs the decoder; the encoder is built on request (tests, code extraction).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from linegen.workers.models.config import VQConfig

# LlamaGen's quantizer keeps a ring buffer of recently used codes (training statistics only).
# Its size is hard-coded, not tied to the codebook size, and it is in every official file.
CODEBOOK_USAGE_WINDOW = 65536


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # The key exists only when the width changes, exactly as in the official files.
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # LlamaGen's dropout here is p=0
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, residual."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)

        def tokens(conv: nn.Conv2d) -> Tensor:  # [B, 1, h*w, C]: one head of width C
            return conv(hn).reshape(b, 1, c, h * w).transpose(2, 3)

        # SDPA's default scale 1/sqrt(C) is LlamaGen's C^-0.5; the fused kernels avoid
        # materialising the (hw x hw) matrix at large grids.
        o = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        return x + self.proj_out(o.transpose(2, 3).reshape(b, c, h, w))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bfloat16:
            # As LlamaGen does: nearest upsampling of bf16 was not supported everywhere.
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric zero padding (right/bottom only): torch convs only pad symmetrically.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution level: `res` blocks, `attn` blocks (maybe empty), an optional resampler."""

    def __init__(self, res: list[nn.Module], attn: list[nn.Module]):
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn)

    def forward(self, h: Tensor) -> Tensor:
        # Where attention exists there is one AttnBlock after each ResnetBlock.
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


def mid_blocks(ch: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(ch, ch, groups), AttnBlock(ch, groups), ResnetBlock(ch, ch, groups)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        ch_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            ch_out, last = cfg.ch * mult, level == n - 1
            res, attn = [], []
            for _ in range(cfg.num_res_blocks):
                res.append(ResnetBlock(ch_in, ch_out, g))
                ch_in = ch_out
                if last:
                    attn.append(AttnBlock(ch_out, g))
            block = Level(res, attn)
            if not last:
                block.downsample = Downsample(ch_out)
            self.conv_blocks.append(block)
        self.mid = mid_blocks(ch_in, g)
        self.norm_out = norm(ch_in, g)
        self.conv_out = nn.Conv2d(ch_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = block(h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        ch_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch_in, 3, padding=1)
        self.mid = mid_blocks(ch_in, g)
        # Stored lowest resolution first (reversed level order), as in the official keys.
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            ch_out, lowest = cfg.ch * cfg.ch_mult[level], level == n - 1
            res, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                res.append(ResnetBlock(ch_in, ch_out, g))
                ch_in = ch_out
                if lowest:
                    attn.append(AttnBlock(ch_out, g))
            block = Level(res, attn)
            if level != 0:
                block.upsample = Upsample(ch_out)
            self.conv_blocks.append(block)
        self.norm_out = norm(ch_in, g)
        self.conv_out = nn.Conv2d(ch_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            h = block(h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> Tensor:
        # LlamaGen uses an L2-normalised codebook both for lookup and for nearest-neighbour search.
        return F.normalize(self.embedding.weight, p=2, dim=-1)


class VQModel(nn.Module):
    """LlamaGen VQ-GAN tokenizer. Decoder-only unless `with_encoder`."""

    def __init__(self, config: VQConfig, with_encoder: bool = False):
        super().__init__()
        self.config = config
        self.with_encoder = with_encoder
        # Registration order follows the official model, so state_dict order matches its files.
        if with_encoder:
            self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim)
        if with_encoder:
            self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    def decode_code(self, indices: Tensor, grid: int | None = None) -> Tensor:
        """Token grids [B, N] (raster order) -> images [B, 3, grid*ds, grid*ds], roughly in [-1, 1]."""
        b, n = indices.shape
        grid = grid if grid is not None else math.isqrt(n)
        if grid * grid != n:
            raise ValueError(f"decode_code: {n} tokens do not form a {grid}x{grid} grid")
        z = self.quantize.codebook()[indices]  # [B, N, D]
        z = z.reshape(b, grid, grid, -1).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(z))

    def encode(self, images: Tensor, chunk: int = 4096) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> codes [B, (H/ds)*(W/ds)] in raster order."""
        if not self.with_encoder:
            raise RuntimeError("VQModel was built without an encoder (with_encoder=False)")
        h = self.quant_conv(self.encoder(images))  # [B, D, h, w]
        b = h.shape[0]
        z = F.normalize(h.float(), p=2, dim=1).permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # b,h,w order
        e = self.quantize.codebook().float()
        e_sq = e.square().sum(1)
        # Same distance expression as LlamaGen (|z|^2 + |e|^2 - 2 z.e), so near-ties break alike;
        # chunked because the full (positions x codebook) matrix is large for big batches.
        out = []
        for zc in z.split(chunk):
            d = zc.square().sum(1, keepdim=True) + e_sq - 2 * zc @ e.T
            out.append(d.argmin(1))
        return torch.cat(out).reshape(b, -1)


def to_uint8(x: Tensor) -> Tensor:
    """Images [B, 3, H, W] in about [-1, 1] -> uint8 [B, H, W, 3] on the same device.

    Truncation after the +128 offset is LlamaGen's own post-processing (round-half-up of
    127.5*(x+1)); it matches torchvision's save_image(normalize=True, value_range=(-1, 1)).
    """
    y = torch.clamp(127.5 * x.float() + 128.0, 0, 255)
    return y.permute(0, 2, 3, 1).to(torch.uint8).contiguous()
