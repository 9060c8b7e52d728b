"""`linegen generate` end to end with official-layout checkpoints, and its bad-input errors.

Generation and `--help`'s start-up time run as real subprocesses; the refusals run in-process
(tests/cli_runner.py): they stop before any model loads."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reference_gpt as ref
from cli_runner import invoke
from linegen.workers.models.checkpoint import init_random
from linegen.workers.models.gpt import GPT
from linegen.workers.models.registry import get_spec
from linegen.workers.models.vq import VQModel, to_uint8

LINEGEN = str(Path(sys.executable).parent / "linegen")
SPEC = get_spec("test-tiny")


def linegen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LINEGEN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def official_checkpoints(tmp_path_factory):
    """A test-tiny GPT saved the way train_c2i.py does (DDP prefixes, optimizer, pickled args)
    and a VQ saved as {"model": ..., plus encoder keys}."""
    d = tmp_path_factory.mktemp("ckpt")
    gpt = GPT(SPEC.gpt)
    init_random(gpt, 11)
    for p in gpt.parameters():
        p.data.mul_(5)
    sd = {f"module.{k}": v for k, v in gpt.state_dict().items()}
    sd["module.freqs_cis"] = torch.zeros(3)
    torch.save({"model": sd, "optimizer": {"state": {}}, "steps": 100,
                "args": argparse.Namespace(gpt_model="GPT-tiny")}, d / "gpt.pt")
    torch.manual_seed(5)
    vq = VQModel(SPEC.vq, with_encoder=True)
    torch.save({"model": vq.state_dict()}, d / "vq.pt")
    return d / "gpt.pt", d / "vq.pt", gpt, vq


def reference_greedy(gpt: GPT, class_id: int, cfg: float) -> torch.Tensor:
    """Independent greedy decode: full uncached recomputation each step, CFG mixed by hand."""
    sd = {k: v.detach() for k, v in gpt.state_dict().items()}
    toks: list[int] = []
    for _ in range(SPEC.num_tokens):
        t = torch.tensor(toks, dtype=torch.long)
        c = ref.forward(sd, SPEC.gpt.n_head, ref.embed_class(sd, class_id), t, SPEC.grid)[-1]
        u = ref.forward(sd, SPEC.gpt.n_head, ref.embed_class(sd, 1000), t, SPEC.grid)[-1]
        toks.append(int((u + cfg * (c - u)).argmax()))
    return torch.tensor(toks)


def test_generate_greedy_matches_independent_reference(official_checkpoints, tmp_path):
    gpt_path, vq_path, gpt, vq = official_checkpoints
    out = tmp_path / "gen"
    r = invoke(["generate", "--model", "test-tiny", "--checkpoint", str(gpt_path), "--vq-checkpoint", str(vq_path),
                "--class-id", "7", "--class-id", "3", "--count", "2", "--top-k", "1", "--cfg-scale", "4.0",
                "--dtype", "float32", "--device", "cpu", "--out", str(out)])  # in-process: it only writes files
    assert r.returncode == 0, r.stderr
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (4, SPEC.num_tokens) and tokens.dtype == np.int32
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["000000.png", "000001.png", "000002.png", "000003.png"]
    # order: class 7 twice, then class 3 twice; greedy => both replicas identical
    for i, cls in enumerate([7, 7, 3, 3]):
        assert torch.equal(torch.from_numpy(tokens[i]).long(), reference_greedy(gpt, cls, 4.0)), f"image {i}"
    with torch.no_grad():
        expected = to_uint8(vq.eval().decode_code(torch.from_numpy(tokens).long(), SPEC.grid)).numpy()
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB")), expected[i])


def test_generate_random_weights_and_seeds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, classes in ((a, ["1", "2"]), (b, ["2"])):
        args = [x for c in classes for x in ("--class-id", c)]
        r = invoke(["generate", "--model", "test-tiny", *args, "--count", "2", "--seed", "9", "--top-k", "50", "--out", str(out)])
        assert r.returncode == 0, r.stderr
    ta, tb = np.load(a / "tokens.npy"), np.load(b / "tokens.npy")
    assert not np.array_equal(ta[0], ta[1])  # replicas differ
    # a class's images depend on its row in the request, as in a manifest (row 1 vs row 0 here)
    assert ta.shape == (4, SPEC.num_tokens) and tb.shape == (2, SPEC.num_tokens)


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown model 'nope'; valid models: linegen-shapes-c2i, linegen-photos-c2i, llamagen-c2i-b-256"),
    (["--model", "llamagen-c2i-b-256", "--checkpoint", "/nonexistent/c2i_B_256.pt", "--vq-checkpoint", "/nonexistent/vq.pt"],
     "--checkpoint /nonexistent/c2i_B_256.pt: no such file"),
    (["--model", "llamagen-c2i-b-256"], "needs --checkpoint"),
    (["--class-id", "1000"], "--class-id 1000 is outside 0..999"),
    (["--class-id", "-1"], "outside 0..999"),
    (["--count", "0"], "--count must be in 1..1,000,000,000"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "0"], "temperature"),
    (["--device", "cuda"], "no CUDA GPU is available"),
    (["--dtype", "int8"], "--dtype must be one of"),
    (["--cache", "linear", "--cache-ratio", "0"], "ratio must be in (0, 1]"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    base = ["generate", "--out", str(tmp_path / "o")]
    if "--model" not in args:
        base += ["--model", "test-tiny"]
    if "--class-id" not in args:
        base += ["--class-id", "1"]
    r = invoke([*base, *args])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists()


def test_unreadable_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = invoke(["generate", "--model", "test-tiny", "--checkpoint", str(bad), "--vq-checkpoint", str(bad),
                "--class-id", "1", "--out", str(tmp_path / "o")])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(bad) in r.stderr and r.stderr.startswith("error: ")


def test_s3_checkpoint_with_wrong_credentials_or_missing_bucket(s3_server, tmp_bucket, tmp_path):
    import os

    env = {**os.environ, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    args = ["generate", "--model", "llamagen-c2i-b-256", "--checkpoint", f"s3://{tmp_bucket}/c2i.pt",
            "--vq-checkpoint", f"s3://{tmp_bucket}/vq.pt", "--class-id", "1", "--out", str(tmp_path / "o"),
            "--s3-endpoint-url", s3_server.endpoint_url]
    r = invoke(args, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "credentials" in r.stderr.lower(), r.stderr
    env = {**os.environ, **s3_server.env()}
    args[4] = "s3://no-such-bucket-xyz/c2i.pt"
    r = invoke(args, env=env)
    assert r.returncode != 0 and "no-such-bucket-xyz" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_is_fast_and_lists_commands():
    import time

    t0 = time.perf_counter()
    r = linegen("--help")
    assert r.returncode == 0
    assert time.perf_counter() - t0 < 5
    for cmd in ("generate", "models", "run", "validate", "bench"):
        assert cmd in r.stdout
    r = subprocess.run([sys.executable, "-c", "import linegen.cli.main, sys; print('torch' in sys.modules, 'ray' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False False"
