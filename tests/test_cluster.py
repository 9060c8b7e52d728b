"""cluster/: address resolution, Jobs API against real Ray heads (with and without token auth),
utilisation snapshots, the embedded local cluster, prices and the config file."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from linegen.cluster import jobs_api
from linegen.cluster.address import ClusterAddress, resolve_cluster
from linegen.settings.config_file import ConfigError, load_config, parse_config
from linegen.cluster.jobs_api import ClusterError
from linegen.cluster.local import LocalCluster, free_port
from linegen.cost.prices import PriceTable, UnknownDevice, canonical_device, cost, parse_price
from linegen.cluster.utilisation import snapshot

HELLO = "python -c \"print('hello from linegen')\""

_RAY_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "LINEGEN_RAY_TOKEN", "RAY_AUTH_TOKEN",
            "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def _sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _RAY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- address


def test_resolve_cluster_url_precedence(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_cluster() is None  # nothing anywhere: the embedded local cluster
    assert resolve_cluster(default_url="http://cfg:8265").url == "http://cfg:8265"
    clean_env.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address (inside a job): ignored
    assert resolve_cluster() is None
    clean_env.setenv("RAY_ADDRESS", "http://ra:8265/")
    assert resolve_cluster(default_url="http://cfg:8265").url == "http://ra:8265"
    clean_env.setenv("RAY_API_SERVER_ADDRESS", "https://api:443")
    assert resolve_cluster().url == "https://api:443"
    assert resolve_cluster("head:8265").url == "http://head:8265"
    with pytest.raises(ValueError, match="not an http"):
        resolve_cluster("ray://head:10001")


def test_resolve_cluster_token_precedence_and_masking(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    a = resolve_cluster("http://h:8265", token=secret)
    assert a.token == secret and a.token_source == "argument"
    assert a.request_headers() == {"Authorization": f"Bearer {secret}"}
    assert secret not in repr(a) and secret not in str(a)
    assert resolve_cluster("http://h:8265").token is None

    clean_env.setenv("RAY_AUTH_TOKEN", "from-ray-env")
    assert resolve_cluster("http://h:8265").token == "from-ray-env"
    clean_env.setenv("LINEGEN_RAY_TOKEN", "from-linegen-env")
    a = resolve_cluster("http://h:8265")
    assert (a.token, a.token_source) == ("from-linegen-env", "LINEGEN_RAY_TOKEN")
    clean_env.delenv("LINEGEN_RAY_TOKEN")
    clean_env.delenv("RAY_AUTH_TOKEN")

    tok_file = tmp_path / "tok"
    tok_file.write_text("from-file\n")
    assert resolve_cluster("http://h:8265", token_file=tok_file).token == "from-file"
    # Ray's own token file is read only in token mode.
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tok_file))
    assert resolve_cluster("http://h:8265").token is None
    clean_env.setenv("RAY_AUTH_MODE", "token")
    assert resolve_cluster("http://h:8265").token == "from-file"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_cluster("http://h:8265", token_file=tmp_path / "missing")

    masked = ClusterAddress("http://h:8265", headers={"Authorization": "Bearer x", "X-Team": "a"})
    assert "Bearer x" not in repr(masked) and "X-Team" in repr(masked)


# --------------------------------------------------------------------------- Jobs API


def test_submit_status_logs_and_duplicate(ray_head) -> None:
    client = jobs_api.connect(ray_head.address())
    sid = _sid("hello")
    assert jobs_api.submit(client, HELLO, sid, metadata={"job": "t", "n": 3}) is True
    state = jobs_api.wait(client, sid, timeout=90, poll=0.5)
    assert state.status == "SUCCEEDED", state.message
    assert state.submission_id == sid and state.entrypoint == HELLO
    assert state.metadata["job"] == "t" and state.metadata["n"] == "3"
    assert state.start_time and state.end_time and state.end_time >= state.start_time
    assert "hello from linegen" in jobs_api.logs(client, sid)
    assert "hello from linegen" in "".join(jobs_api.tail_logs(client, sid))

    # Same id again: refused, and no second run exists.
    assert jobs_api.submit(ray_head.address(), HELLO, sid) is False
    same = [j for j in jobs_api.list_jobs(client) if j.submission_id == sid]
    assert len(same) == 1 and same[0].status == "SUCCEEDED"


def test_stop_running_job(ray_head) -> None:
    client = jobs_api.connect(ray_head.address())
    sid = _sid("sleep")
    assert jobs_api.submit(client, "sleep 60", sid)
    state = jobs_api.wait(client, sid, timeout=60, poll=0.25, until={"RUNNING", "SUCCEEDED", "FAILED"})
    assert state.status == "RUNNING"
    assert jobs_api.stop(client, sid) is True
    state = jobs_api.wait(client, sid, timeout=60, poll=0.25)
    assert state.status == "STOPPED"


def test_connect_uses_the_given_address_not_ray_env(ray_head, clean_env: pytest.MonkeyPatch) -> None:
    # Ray's client would otherwise replace its argument with these (inside a job, RAY_ADDRESS
    # is the GCS address).
    clean_env.setenv("RAY_ADDRESS", "127.0.0.1:1")
    clean_env.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
    client = jobs_api.connect(ray_head.address())
    assert isinstance(jobs_api.list_jobs(client), list)
    assert client.linegen_address.url == ray_head.url
    assert (client._address, os.environ["RAY_ADDRESS"]) == (ray_head.url, "127.0.0.1:1")


def test_unknown_job(ray_head) -> None:
    client = jobs_api.connect(ray_head.address())
    for call in (jobs_api.status, jobs_api.logs, jobs_api.stop, jobs_api.tail_logs):
        with pytest.raises(ClusterError) as e:
            call(client, "no-such-job")
        assert _one_line(e.value) == f"no job 'no-such-job' on cluster {ray_head.url}"


def test_unreachable_url_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as e:
        jobs_api.connect(ClusterAddress(url))
    assert _one_line(e.value).startswith(f"cannot reach Ray cluster at {url}: ")
    assert time.monotonic() - t0 < 5
    # A server that accepts connections but never answers: the timeout bounds the wait.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as e:
            jobs_api.connect(ClusterAddress(url), timeout=1.0)
        assert _one_line(e.value) == f"cannot reach Ray cluster at {url}: timed out"
        assert time.monotonic() - t0 < 5


def test_non_ray_url() -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ClusterError) as e:
            jobs_api.connect(ClusterAddress(url))
        assert _one_line(e.value) == f"{url} does not look like a Ray dashboard (HTTP 404 on /api/version)"
        with pytest.raises(ClusterError, match="does not look like a Ray dashboard"):
            snapshot(ClusterAddress(url))
    finally:
        server.shutdown()
        server.server_close()


def test_snapshot_remote(ray_head) -> None:
    snap = snapshot(ray_head.address())
    json.dumps(snap)  # what `linegen monitor --once --json` prints
    assert snap["cluster"] == ray_head.url and snap["ray_version"]
    alive = [n for n in snap["nodes"] if n["alive"]]
    assert len(alive) >= 1 and alive[0]["is_head"]
    assert alive[0]["cpus_total"] == 1 and snap["cpus"]["total"] >= 1
    assert snap["cpus"]["in_use"] is None or snap["cpus"]["in_use"] >= 0
    assert snap["gpus"]["total"] == 0 and snap["gpus"]["in_use"] in (0, None)
    assert snap["gpus"]["utilisation_percent"] is None
    for node in alive:
        assert node["gpu_utilisation_percent"] is None
        assert node["gpu_memory_used_bytes"] is None
    assert isinstance(snap["jobs"], list)
    for job in snap["jobs"]:
        assert job["status"] in jobs_api.ALL_STATUSES


# --------------------------------------------------------------------------- token auth


def test_token_auth(ray_head_token) -> None:
    head = ray_head_token
    with pytest.raises(ClusterError) as e:
        jobs_api.connect(head.address_without_token())
    msg = _one_line(e.value)
    assert msg.startswith(f"the Ray cluster at {head.url} rejected the token (missing or wrong)")
    assert "no token was sent" in msg

    wrong = "0" * 64
    with pytest.raises(ClusterError) as e:
        jobs_api.connect(head.address(token=wrong))
    assert "rejected the token" in _one_line(e.value) and wrong not in str(e.value)
    with pytest.raises(ClusterError, match="rejected the token"):
        snapshot(head.address(token=wrong))

    client = jobs_api.connect(head.address())
    sid = _sid("auth")
    assert jobs_api.submit(client, HELLO, sid)
    state = jobs_api.wait(client, sid, timeout=90, poll=0.5)
    assert state.status == "SUCCEEDED", state.message
    assert "hello from linegen" in "".join(jobs_api.tail_logs(client, sid))
    snap = snapshot(head.address())
    assert any(j["submission_id"] == sid for j in snap["jobs"])


def test_token_from_environment(ray_head_token, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LINEGEN_RAY_TOKEN", ray_head_token.token)
    address = resolve_cluster(ray_head_token.url)
    assert jobs_api.ray_version(address)


# --------------------------------------------------------------------------- embedded cluster


def test_local_cluster_snapshot(tmp_path: Path) -> None:
    import ray

    already = ray.is_initialized()
    if not already:
        with pytest.raises(ClusterError, match="no embedded Ray cluster"):
            snapshot(None)
    with LocalCluster(num_cpus=1, auth_mode="disabled", log_to_driver=False) as lc:
        assert lc.started is (not already)
        snap = snapshot(None)
        assert snap["cluster"] == "local" and snap["cpus"]["total"] >= 1
        assert snap["nodes"] and snap["nodes"][0]["alive"]
        assert snap["gpus"]["utilisation_percent"] is None
    assert ray.is_initialized() is already


# --------------------------------------------------------------------------- prices


def test_price_lookup_by_torch_names() -> None:
    table = PriceTable()
    assert canonical_device("NVIDIA H100 80GB HBM3") == "H100"
    assert canonical_device("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert canonical_device("NVIDIA A100-PCIE-40GB") == "A100-40GB"
    assert canonical_device("Tesla T4") == "T4"
    assert canonical_device("NVIDIA L40S") == "L40S" and canonical_device("NVIDIA L4") == "L4"
    assert canonical_device("cpu") == "CPU"
    assert table.lookup("NVIDIA H100 80GB HBM3").usd_per_hour == pytest.approx(55.04 / 8)
    assert table.lookup("cpu").unit == "vCPU-hour"
    for price in table.items():
        assert price.source and price.date and price.usd_per_hour > 0
    assert table.lookup("NVIDIA L40") is None  # not an L40S, not an L4
    assert cost(7200, "NVIDIA H100 80GB HBM3", table) == pytest.approx(2 * 55.04 / 8)
    with pytest.raises(UnknownDevice, match="--price"):
        cost(10, "Z9000", table)


def test_price_overrides() -> None:
    table = PriceTable().with_overrides(["H100=3.29", "A100=2", "RTX4090=0.4"])
    assert table.lookup("NVIDIA H100 PCIe").usd_per_hour == 3.29
    assert table.lookup("NVIDIA A100-SXM4-80GB").usd_per_hour == 2.0  # family override
    assert table.lookup("NVIDIA GeForce RTX 4090").usd_per_hour == 0.4
    assert table.lookup("Tesla T4").usd_per_hour == pytest.approx(0.526)  # built-in kept
    assert PriceTable().with_overrides({"h100": 1.5}).lookup("H100").usd_per_hour == 1.5
    assert parse_price(" H100 = $3.29 ") == ("H100", 3.29)
    for bad, why in (("H100", "expected DEVICE=DOLLARS_PER_HOUR"), ("H100=abc", "not a number"),
                     ("=3", "no device name"), ("H100=-1", ">= 0"), ("H100=inf", ">= 0")):
        with pytest.raises(ValueError, match=why):
            parse_price(bad)


# --------------------------------------------------------------------------- config


_CONFIG = """
[cluster]
address = "http://head:8265"
token_file = "ray_token"

[output]
out = "s3://bucket/data"

[s3]
endpoint_url = "http://127.0.0.1:8333"

[prices]
H100 = 3.29
T4 = 0.35

[models]
c2i-xl = { checkpoint = "s3://b/c2i_XL_384.pt", vq_checkpoint = "s3://b/vq_ds16_c2i.pt" }
"""


def test_config_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_CONFIG)
    monkeypatch.setenv("LINEGEN_CONFIG", str(path))
    cfg = load_config()
    assert cfg.path == path
    assert cfg.cluster.address == "http://head:8265"
    assert cfg.cluster.token_file == tmp_path / "ray_token"  # relative to the config file
    assert cfg.output.out == "s3://bucket/data"
    assert cfg.s3.endpoint_url == "http://127.0.0.1:8333"
    assert cfg.prices == {"H100": 3.29, "T4": 0.35}
    assert cfg.models["c2i-xl"].vq_checkpoint == "s3://b/vq_ds16_c2i.pt"
    table = PriceTable().with_overrides(cfg.prices)
    assert table.lookup("NVIDIA H100 80GB HBM3").usd_per_hour == 3.29

    monkeypatch.setenv("LINEGEN_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()
    monkeypatch.delenv("LINEGEN_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    assert load_config() == type(cfg)()  # no file at the default path: empty config


def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[cluster]\naddress = "http://head:8265"\nport = = 3\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value)

    with pytest.raises(ConfigError, match=r"c\.toml, line 3: \[cluster\] token: secrets are not stored.*token_file"):
        parse_config('[cluster]\naddress = "http://h:8265"\ntoken = "abc"\n', "/x/c.toml")
    with pytest.raises(ConfigError, match="AWS credential chain"):
        parse_config('[s3]\naws_secret_access_key = "k"\n', "/x/c.toml")
    with pytest.raises(ConfigError, match=r"line 2: \[prices\] H100"):
        parse_config('[prices]\nH100 = "cheap"\n', "/x/c.toml")
    with pytest.raises(ConfigError, match=r"unknown key \[cluster\] adress"):
        parse_config('[cluster]\nadress = "x"\n', "/x/c.toml")
    with pytest.raises(ConfigError, match=r"unknown section \[foo\]"):
        parse_config("[foo]\nx = 1\n", "/x/c.toml")
