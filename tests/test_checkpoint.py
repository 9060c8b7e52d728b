"""Checkpoint reading and strict loading, on small VQ files written in the official layouts."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from linegen.workers.models.checkpoint import (
    VQ_ENCODER_PREFIXES,
    CheckpointError,
    load_into,
    load_vq,
    read_checkpoint,
)
from linegen.workers.models.config import VQConfig
from linegen.workers.models.vq import VQModel

SMALL = VQConfig(codebook_size=64, codebook_embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full VQ state dict (encoder, decoder, codebook_used) with every tensor random."""
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in VQModel(SMALL, with_encoder=True).state_dict().items()}


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return random_state(0)


def training_extras() -> dict:
    return {
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
        "steps": 12345,
        "args": argparse.Namespace(vq_model="VQ-16", lr=1e-4, codebook_size=16384),
    }


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


LAYOUTS = {
    "model": lambda sd: {"model": sd, **training_extras(),
                         "discriminator": {"conv.weight": torch.ones(2)}, "optimizer_disc": {}},
    "module": lambda sd: {"module": sd, "steps": 3},
    "state_dict": lambda sd: {"state_dict": sd, "args": argparse.Namespace(a=1)},
    "ema": lambda sd: {"ema": sd, **training_extras()},
    "flat": lambda sd: dict(sd),
    "ddp_prefix": lambda sd: {"model": prefixed(sd, "module."), **training_extras()},
    "compile_prefix": lambda sd: prefixed(sd, "_orig_mod."),
    "both_prefixes": lambda sd: {"model": prefixed(sd, "module._orig_mod.")},
    "both_prefixes_reversed": lambda sd: {"module": prefixed(sd, "_orig_mod.module.")},
    "junk_keys": lambda sd: {"model": {**sd, "freqs_cis": torch.ones(5, 2, 2), "causal_mask": torch.ones(4, 4).bool(),
                                       "layers.0.attention.kv_cache.k_cache": torch.ones(1, 2, 3, 4),
                                       "layers.0.attention.kv_cache.v_cache": torch.ones(1, 2, 3, 4)}},
    "decoder_only": lambda sd: {"model": {k: v for k, v in sd.items() if not k.startswith(VQ_ENCODER_PREFIXES)}},
}


def assert_loaded(model: nn.Module, sd: dict) -> None:
    got = model.state_dict()
    assert got.keys() <= sd.keys()
    for k, v in got.items():
        assert v.device.type == "cpu"
        assert torch.equal(v, sd[k].to(v.dtype)), k


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_load_into_decoder_only(tmp_path, sd, layout):
    path = tmp_path / f"{layout}.pt"
    torch.save(LAYOUTS[layout](sd), path)
    model = load_vq(SMALL, path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "encoder")
    assert_loaded(model, sd)
    with torch.no_grad():
        assert model.decode_code(torch.zeros(1, 4, dtype=torch.long), 2).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("layout", ["model", "flat", "both_prefixes", "junk_keys"])
def test_layouts_load_with_encoder(tmp_path, sd, layout):
    path = tmp_path / "vq.pt"
    torch.save(LAYOUTS[layout](sd), path)
    model = load_vq(SMALL, str(path), with_encoder=True)
    assert_loaded(model, sd)
    assert model.state_dict().keys() == sd.keys()  # encoder, quant_conv and codebook_used included
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 4, 4)).shape == (1, 4)


def test_entry_preference(tmp_path, sd):
    others = [random_state(s) for s in (1, 2, 3)]
    cases = [
        ({"ema": others[2], "state_dict": others[1], "module": others[0], "model": sd}, sd),
        ({"ema": others[2], "state_dict": others[1], "module": sd}, sd),
        ({"ema": others[2], "state_dict": sd}, sd),
    ]
    for i, (ckpt, want) in enumerate(cases):
        path = tmp_path / f"pref{i}.pt"
        torch.save(ckpt, path)
        assert_loaded(load_vq(SMALL, path), want)


def test_sources_file_object_dict_and_legacy_format(tmp_path, sd):
    buf = io.BytesIO()
    torch.save({"model": sd, **training_extras()}, buf)
    buf.seek(0)
    assert_loaded(load_vq(SMALL, buf), sd)

    assert_loaded(load_vq(SMALL, {"model": prefixed(sd, "module.")}), sd)

    legacy = tmp_path / "legacy.pt"
    torch.save({"model": sd}, legacy, _use_new_zipfile_serialization=False)
    with open(legacy, "rb") as f:
        assert_loaded(load_vq(SMALL, f), sd)
    assert_loaded(load_vq(SMALL, legacy), sd)


def test_read_checkpoint_returns_clean_tensor_dict(tmp_path, sd):
    path = tmp_path / "vq.pt"
    torch.save(LAYOUTS["ddp_prefix"](sd), path)
    state = read_checkpoint(path)
    assert state.keys() == sd.keys()
    assert all(torch.equal(state[k], sd[k]) for k in sd)


def test_dtypes_are_cast_to_the_module(tmp_path, sd):
    half = {k: v.half() for k, v in sd.items()}
    path = tmp_path / "fp16.pt"
    torch.save({"model": half}, path)
    model = load_vq(SMALL, path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_loaded(model, {k: v.float() for k, v in half.items()})

    bf16 = VQModel(SMALL).to(torch.bfloat16)
    load_into(bf16, read_checkpoint(path), source_name=str(path), optional_prefixes=VQ_ENCODER_PREFIXES)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert_loaded(bf16, half)


# ---------------------------------------------------------------- mismatches

def load_error(tmp_path: Path, state: dict, *, with_encoder: bool = False) -> str:
    path = tmp_path / "bad_ckpt.pt"
    torch.save({"model": state, **training_extras()}, path)
    with pytest.raises(CheckpointError) as e:
        load_vq(SMALL, path, with_encoder=with_encoder)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_key_is_an_error(tmp_path, sd):
    state = {k: v for k, v in sd.items() if k != "decoder.conv_out.bias"}
    msg = load_error(tmp_path, state)
    assert "missing" in msg and "decoder.conv_out.bias" in msg


def test_missing_codebook_usage_buffer_is_an_error(tmp_path, sd):
    msg = load_error(tmp_path, {k: v for k, v in sd.items() if k != "quantize.codebook_used"})
    assert "quantize.codebook_used" in msg


def test_many_missing_keys_are_counted(tmp_path, sd):
    state = {k: v for k, v in sd.items() if not k.startswith("decoder.mid.")}
    msg = load_error(tmp_path, state)
    n = sum(k.startswith("decoder.mid.") for k in sd)
    assert f"missing {n} keys" in msg and f"(+{n - 5} more)" in msg


def test_unexpected_key_is_an_error(tmp_path, sd):
    msg = load_error(tmp_path, {**sd, "decoder.extra_block.weight": torch.ones(3)})
    assert "unexpected" in msg and "decoder.extra_block.weight" in msg


def test_unexpected_encoder_key_is_an_error_when_the_encoder_is_built(tmp_path, sd):
    msg = load_error(tmp_path, {**sd, "encoder.bogus.weight": torch.ones(3)}, with_encoder=True)
    assert "encoder.bogus.weight" in msg


def test_missing_encoder_is_an_error_when_asked_for(tmp_path, sd):
    msg = load_error(tmp_path, LAYOUTS["decoder_only"](sd)["model"], with_encoder=True)
    n = sum(k.startswith(VQ_ENCODER_PREFIXES) for k in sd)
    assert f"missing {n} keys: encoder.conv_in.weight" in msg


def test_wrong_shape_is_an_error(tmp_path, sd):
    msg = load_error(tmp_path, {**sd, "post_quant_conv.weight": torch.ones(32, 4, 1, 1)})
    assert "post_quant_conv.weight" in msg
    assert "expected [32, 8, 1, 1]" in msg and "found [32, 4, 1, 1]" in msg


def test_wrong_config_is_an_error(tmp_path, sd):
    path = tmp_path / "vq.pt"
    torch.save({"model": sd}, path)
    bigger = VQConfig(codebook_size=128, codebook_embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        load_vq(bigger, path)


def test_duplicate_keys_after_prefix_stripping(sd):
    with pytest.raises(CheckpointError, match="twice"):
        read_checkpoint({"model": {**sd, "module.post_quant_conv.bias": sd["post_quant_conv.bias"]}})


def test_module_side_junk_buffers_are_kept():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(2, 2, bias=False)
            self.register_buffer("freqs_cis", torch.full((3,), 7.0))

    tiny = Tiny()
    load_into(tiny, {"w.weight": torch.eye(2)}, source_name="tiny.pt")
    assert torch.equal(tiny.w.weight, torch.eye(2)) and torch.equal(tiny.freqs_cis, torch.full((3,), 7.0))
    with pytest.raises(CheckpointError, match="w.weight"):
        load_into(tiny, {"freqs_cis": torch.ones(3)}, source_name="tiny.pt")


# ---------------------------------------------------------------- not checkpoints

@pytest.mark.parametrize("content", [
    bytes(range(256)) * 7,
    b"this is not a checkpoint\njust some text\n",
    b"",
    b"PK\x03\x04garbage that looks like a zip",
], ids=["random_bytes", "text", "empty", "fake_zip"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    for source in (path, str(path)):
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(source)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with open(path, "rb") as f, pytest.raises(CheckpointError, match="weights.pt"):
        read_checkpoint(f)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("payload", [
    {"steps": 1, "args": argparse.Namespace(a=1), "optimizer": {}},
    {"model": {"steps": 1}},
    [torch.ones(2)],
    {},
], ids=["no_state", "empty_model_entry", "list", "empty_dict"])
def test_pickle_without_state_dict(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)
