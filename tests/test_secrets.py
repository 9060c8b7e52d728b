"""No secret is stored or echoed (issue 15, B): credentials inside URLs (`--s3-endpoint-url`,
`--cluster`, `RAY_ADDRESS`) become `user:***@` wherever they are stored or printed, and a header
value is never echoed. The Ray side (job metadata and runtime env of a real submission) is checked
in tests/test_remote.py::test_submit_stores_no_url_credentials."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from linegen.cluster.address import ClusterAddress, redact_url, resolve_cluster
from linegen.cluster.local import free_port
from linegen.errors import UserError

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H

SECRET = "s3cr3tpw"


def test_redaction_keeps_the_user() -> None:
    from linegen.cluster.address import redact_text

    assert redact_url(f"http://alice:{SECRET}@proxy:8265/ray") == "http://alice:***@proxy:8265/ray"
    assert redact_url(f"https://{SECRET}@host") == "https://***@host"  # a lone part may be a token
    assert redact_url("http://head:8265") == "http://head:8265"
    text = redact_text(f"cannot reach http://alice:{SECRET}@h:1/x (and s3://b/k, http://u:p@w@h2)")
    assert SECRET not in text and "http://alice:***@h:1/x" in text and "http://u:***@h2" in text


def test_cluster_address_sends_credentials_but_never_shows_them() -> None:
    a = ClusterAddress(f"http://alice:{SECRET}@127.0.0.1:8265")
    assert a.url == "http://127.0.0.1:8265" and a.display == "http://alice:***@127.0.0.1:8265"
    assert a.request_headers()["Authorization"].startswith("Basic ")
    assert SECRET not in repr(a) and SECRET not in str(a)
    tokened = resolve_cluster(f"http://alice:{SECRET}@h:1", token="tok")
    assert tokened.request_headers()["Authorization"] == "Bearer tok"


def test_job_json_and_reprs_hold_no_endpoint_credentials(tmp_path: Path) -> None:
    from linegen.jobs.prepare import load_job, prepare_job
    from linegen.jobs.spec import JobSpec

    endpoint = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    spec = JobSpec.from_flags(manifest=str(manifest), out=str(tmp_path / "out"), job_id="j", model="test-tiny",
                              random_weights=True, s3_endpoint_url=endpoint)
    assert spec.s3_endpoint_url == endpoint  # the real value, in memory
    assert SECRET not in repr(spec) and SECRET not in repr(spec.model)
    from linegen.jobs.remote import make_context

    cfg = tmp_path / "c.toml"
    cfg.touch()
    ctx = make_context(config=str(cfg), out=str(tmp_path / "out"), s3_endpoint_url=endpoint)
    assert ctx.s3_endpoint_url == endpoint and SECRET not in repr(ctx)
    cfg.write_text(f'[s3]\nendpoint_url = "{endpoint}"\n')  # and the config file refuses to hold it
    with pytest.raises(UserError, match=r"line 2: \[s3\] endpoint_url: a URL with credentials") as err:
        make_context(config=str(cfg))
    assert SECRET not in str(err.value)
    prepare_job(spec)
    stored = (tmp_path / "out" / "j" / "job.json").read_text()
    assert SECRET not in stored and "alice:***@127.0.0.1" in stored
    # a resume from job.json gets the real endpoint back only from the flag / environment
    assert load_job(str(tmp_path / "out"), "j").s3_endpoint_url == redact_url(endpoint)
    assert load_job(str(tmp_path / "out"), "j", endpoint).model.s3_endpoint_url == endpoint
    prepare_job(JobSpec.from_flags(manifest=str(manifest), out=str(tmp_path / "out"), job_id="j", model="test-tiny",
                                   random_weights=True, s3_endpoint_url=endpoint))  # still the same job


def test_recorded_endpoint_without_credentials_says_so() -> None:
    from linegen.jobs.storage import S3Storage, StorageError

    store = S3Storage("b", endpoint_url="http://alice:***@127.0.0.1:1")
    with pytest.raises(StorageError, match="recorded without its credentials.*LINEGEN_S3_ENDPOINT_URL"):
        store.exists("k")


def test_crlf_in_a_header_never_echoes_the_value() -> None:
    from linegen.jobs.remote import parse_headers

    for bad in (f"X-Auth={SECRET}\r\nEvil: 1", f"X-Auth: {SECRET}\n", f"X-Auth={SECRET}\x00"):
        with pytest.raises(UserError) as err:
            parse_headers([bad])
        assert SECRET not in str(err.value) and "X-Auth" in str(err.value)
    with pytest.raises(UserError) as err:
        parse_headers([f"{SECRET} x=1"])
    assert SECRET not in str(err.value)


def _lg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([H.LINEGEN, *args], capture_output=True, text=True, timeout=120,
                          env=H.clean_env(env))


def test_cli_errors_never_echo_url_credentials(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    for args, env in ((["status", "j", "--cluster", f"http://alice:{SECRET}@{dead}"], None),
                      (["list", "--json"], {"RAY_ADDRESS": f"http://alice:{SECRET}@{dead}"}),
                      (["submit", str(H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])), "--out",
                        str(tmp_path / "o"), "--cluster", f"http://alice:{SECRET}@{dead}"], None)):
        r = _lg(*args, env=env)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stdout + r.stderr
        assert f"http://alice:***@{dead}" in r.stderr, r.stderr
    r = _lg("status", "j", "--cluster", f"http://{dead}", "--header", f"X-Auth={SECRET}\r\nEvil: 1", "--json")
    assert r.returncode != 0 and SECRET not in r.stdout + r.stderr
    assert json.loads(r.stdout)["error"].startswith("--header X-Auth")


def test_s3_errors_never_echo_endpoint_credentials(tmp_path: Path) -> None:
    endpoint = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    r = _lg("run", str(manifest), "--out", "s3://bucket/p", "--s3-endpoint-url", endpoint, *H.MODEL_ARGS,
            env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_DEFAULT_REGION": "us-east-1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr and "alice:***@" in r.stderr, r.stderr
