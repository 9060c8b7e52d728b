"""The Ray Jobs API (dashboard port, usually 8265): submit, status, logs, tail, stop, list.

A thin layer over ``ray.job_submission.JobSubmissionClient`` that

- talks to exactly the address it is given (Ray's client lets ``RAY_ADDRESS`` /
  ``RAY_API_SERVER_ADDRESS`` override its argument; we suppress that while constructing it),
- sends the token from `cluster.address.ClusterAddress` as ``Authorization: Bearer <token>``,
- bounds every HTTP request in *total* time (Ray's client has no timeout, and a per-read timeout
  never fires on a server that drips a byte a second): connect plus the whole answer within
  ``address.timeout_s`` (``--timeout``, default 30 s), and
- turns every failure into a one-line `ClusterError`, a server that does not speak HTTP included.

Every function takes a `ClusterAddress` (it connects first) or a client returned by
`connect()` (to reuse one connection for several calls). Ray is imported lazily.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from linegen.cluster.address import ClusterAddress, redact_text
from linegen.errors import UserError, one_line

TERMINAL_STATUSES = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
ALL_STATUSES = ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 120.0
UPLOAD_BYTES_PER_S = 2**20  # an upload (the shipped code) gets 1 s more per MiB on top of --timeout
MAX_ANSWER_BYTES = 512 * 2**20  # no dashboard answer comes near this (a list of every job: a few MiB)

_env_lock = threading.Lock()


class ClusterError(UserError):
    """A one-line, user-facing error about the cluster (unreachable, auth, unknown job ...)."""


@dataclass
class JobState:
    """One Ray job as the Jobs API reports it. Times are Unix seconds (None if not yet)."""

    submission_id: str | None
    status: str
    message: str = ""
    start_time: float | None = None
    end_time: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint: str = ""
    job_id: str | None = None
    error_type: str | None = None
    driver_exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "submission_id": self.submission_id,
            "job_id": self.job_id,
            "status": self.status,
            "message": self.message,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "metadata": dict(self.metadata),
            "entrypoint": self.entrypoint,
            "error_type": self.error_type,
            "driver_exit_code": self.driver_exit_code,
        }


# --------------------------------------------------------------------------- one-line errors


def _network_reason(exc: BaseException) -> str:
    """'[Errno 111] Connection refused', 'timed out', ... from urllib/requests/socket errors."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _network_reason(reason)
    if isinstance(reason, str) and reason:
        return reason
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return one_line(text) or type(exc).__name__


def unreachable(address: ClusterAddress, exc: BaseException | str) -> ClusterError:
    reason = redact_text(exc if isinstance(exc, str) else _network_reason(exc))
    return ClusterError(f"cannot reach Ray cluster at {address.display}: {reason}")


def auth_rejected(address: ClusterAddress, status: int | None = None) -> ClusterError:
    base = f"the Ray cluster at {address.display} rejected the token (missing or wrong)"
    if not address.token:
        hint = (
            "no token was sent; set LINEGEN_RAY_TOKEN or RAY_AUTH_TOKEN, use --token-file or "
            "[cluster] token_file in the config, or set RAY_AUTH_MODE=token to use Ray's own token file "
            "(~/.ray/auth_token)"
        )
    else:
        hint = f"the token from {address.token_source or 'the argument'} was not accepted"
    code = f" (HTTP {status})" if status else ""
    return ClusterError(f"{base}{code}: {hint}")


def not_a_dashboard(address: ClusterAddress, detail: str) -> ClusterError:
    return ClusterError(f"{address.display} does not look like a Ray dashboard ({detail})")


def no_job(address: ClusterAddress, job: str) -> ClusterError:
    return ClusterError(f"no job '{job}' on cluster {address.display}")


def not_http(address: ClusterAddress, exc: BaseException) -> ClusterError:
    detail = one_line(redact_text(str(exc)), 80)
    return ClusterError(f"{address.display} did not answer with HTTP ({type(exc).__name__}"
                        f"{': ' + detail if detail else ''}); is this the Ray dashboard's URL (usually port 8265)?")


def too_slow(address: ClusterAddress, what: str, total: float) -> ClusterError:
    return ClusterError(f"no complete answer from {address.display} ({what}) within {total:g} s; "
                        "raise --timeout if the cluster is just slow")


# --------------------------------------------------------------------------- bounded calls


def _bounded(address: ClusterAddress, what: str, call, total: float, on_timeout=None):
    """``call()`` on a helper thread, waited for at most ``total`` s (plus a moment for the call's
    own deadline to fire first, which ends the thread too). ``on_timeout`` closes what the call
    holds open, so a stuck read ends instead of lingering."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e

    t = threading.Thread(target=run, name="linegen-http", daemon=True)
    t.start()
    t.join(total + 0.5)
    if t.is_alive():
        if on_timeout is not None:
            try:
                on_timeout()
            except Exception:  # noqa: BLE001 - best effort: the answer is "too slow" either way
                pass
        raise too_slow(address, what, total)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _read_within(read1, deadline: float, address: ClusterAddress, what: str, total: float) -> bytes:
    """The whole body, read a chunk at a time with the deadline checked between reads."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise too_slow(address, what, total)
        chunk = read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ClusterError(f"{address.display} ({what}) answered more than {MAX_ANSWER_BYTES:,} bytes")
        chunks.append(chunk)


# --------------------------------------------------------------------------- raw HTTP


def http_get_json(address: ClusterAddress, path: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Any:
    """GET ``address.url + path`` with the auth headers; JSON body or a one-line ClusterError.

    401/403 -> token rejected; other non-2xx -> "does not look like a Ray dashboard (HTTP n on
    path)"; network failure or timeout -> "cannot reach". Used for the version probe and the
    dashboard's REST endpoints (utilisation snapshots).
    """
    req = urllib.request.Request(address.url + path, headers=address.request_headers(), method="GET")
    total = address.timeout_s
    deadline = time.monotonic() + total
    what = path.split("?")[0]
    opened: list = []

    def call() -> bytes:
        # Each read waits at most `timeout` (a silent server fails as fast as before); the
        # deadline bounds the whole answer (a server dripping bytes).
        with urllib.request.urlopen(req, timeout=min(timeout, total)) as resp:
            opened.append(resp)
            return _read_within(resp.read1, deadline, address, what, total)

    def close() -> None:
        for resp in opened:
            resp.close()

    try:
        body = _bounded(address, what, call, total, on_timeout=close)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise auth_rejected(address, e.code) from None
        raise not_a_dashboard(address, f"HTTP {e.code} on {what}") from None
    except http.client.HTTPException as e:  # BadStatusLine, RemoteDisconnected, LineTooLong...
        if isinstance(e, http.client.RemoteDisconnected):
            raise unreachable(address, "the server closed the connection without an answer") from None
        raise not_http(address, e) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, http.client.HTTPException):
            raise not_http(address, e.reason) from None
        raise unreachable(address, e) from None
    except (OSError, ValueError) as e:
        raise unreachable(address, e) from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or JSON nested past any real answer
        raise not_a_dashboard(address, f"{path.split('?')[0]} did not return JSON") from None


def ray_version(address: ClusterAddress, *, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> str:
    """The cluster's Ray version from ``/api/version``; the check `connect()` makes first."""
    info = http_get_json(address, "/api/version", timeout=timeout)
    if not isinstance(info, dict) or "ray_version" not in info:
        raise not_a_dashboard(address, "no ray_version in /api/version")
    return str(info["ray_version"])


# --------------------------------------------------------------------------- client


def _client_class():
    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's job SDK logs "WebSocket closed ..." at INFO after every log tail.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    class _Client(JobSubmissionClient):
        """JobSubmissionClient with a timeout on every request and the address it came from."""

        linegen_address: ClusterAddress | None = None
        linegen_timeout: tuple[float, float] = (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S)

        def _do_request(self, method, endpoint, *, data=None, json_data=None, **kwargs):
            address = self.linegen_address or ClusterAddress(self._address)
            total = address.timeout_s + (len(data) / UPLOAD_BYTES_PER_S if data else 0.0)
            deadline = time.monotonic() + total
            what = f"{method} {endpoint.split('?')[0]}"
            connect_s, read_s = self.linegen_timeout
            kwargs.setdefault("timeout", (min(connect_s, total), min(read_s, total)))
            responses: list = []

            def load_body(resp, *args, **kw):
                # requests calls this with the headers in and the body not read (stream=True):
                # read it here against the deadline, so Ray's own `.text`/`.json()` find it loaded.
                responses.append(resp)
                resp._content = _read_within(resp.raw.read1, deadline, address, what, total)
                resp._content_consumed = True
                return resp

            kwargs["stream"] = True
            kwargs["hooks"] = {"response": [load_body]}
            parent = super()._do_request

            def close() -> None:
                for resp in responses:
                    resp.close()

            return _bounded(address, what, lambda: parent(method, endpoint, data=data, json_data=json_data,
                                                          **kwargs), total, on_timeout=close)

    return _Client


_CLIENT_CLASS = None


def translate(exc: BaseException, address: ClusterAddress, job: str | None = None) -> ClusterError:
    """Any exception from Ray's client -> a one-line ClusterError."""
    if isinstance(exc, ClusterError):
        return exc
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    text = str(exc)
    if name == "AuthenticationError":
        status = 401 if "Authentication required" in text else 403 if "Authentication failed" in text else None
        return auth_rejected(address, status)
    if "BadStatusLine" in text or "LineTooLong" in text:  # requests wraps http.client's complaint
        return not_http(address, exc)
    if module.startswith(("requests", "urllib3", "aiohttp")) or isinstance(
        exc, (ConnectionError, TimeoutError, socket.timeout)
    ):
        if "WSServerHandshakeError" in name or "ClientResponseError" in name:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                return auth_rejected(address, status)
            if status == 404 and job:
                return no_job(address, job)
        return unreachable(address, exc)
    if job and ("status code 404" in text or "does not exist" in text):
        return no_job(address, job)
    return ClusterError(f"Ray Jobs API at {address.display} failed: {one_line(redact_text(text)) or name}")


def connect(address: ClusterAddress, *, timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
            read_timeout: float = DEFAULT_READ_TIMEOUT_S):
    """A Jobs API client for ``address``, after checking that it answers as a Ray dashboard.

    Fails fast (``timeout`` seconds) with one line: "cannot reach Ray cluster at URL: ...",
    "URL does not look like a Ray dashboard (HTTP 404 on /api/version)", or "the Ray cluster at
    URL rejected the token (missing or wrong)".
    """
    global _CLIENT_CLASS
    if not isinstance(address, ClusterAddress):
        raise TypeError(f"connect() needs a ClusterAddress, got {type(address).__name__}")
    ray_version(address, timeout=timeout)
    if _CLIENT_CLASS is None:
        _CLIENT_CLASS = _client_class()
    cls = _CLIENT_CLASS
    cls_timeout = (timeout, read_timeout)
    # Ray's client replaces its address argument with $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS;
    # hide them while it is built so it talks to exactly `address.url`.
    with _env_lock:
        saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
        try:
            cls.linegen_timeout, cls.linegen_address = cls_timeout, address  # for the constructor's own request
            client = cls(address.url, headers=address.request_headers())
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise translate(e, address) from None
        finally:
            cls.linegen_address = None
            os.environ.update(saved)
    client.linegen_address = address
    client.linegen_timeout = cls_timeout
    return client


def _client_and_address(target) -> tuple[Any, ClusterAddress]:
    if isinstance(target, ClusterAddress):
        client = connect(target)
        return client, target
    address = getattr(target, "linegen_address", None)
    if address is None:
        raise TypeError("expected a ClusterAddress or a client returned by cluster.jobs_api.connect()")
    return target, address


def _seconds(ms: Any) -> float | None:
    if ms is None:
        return None
    try:
        value = float(ms)
    except (TypeError, ValueError):
        return None
    return value / 1000.0 if value > 0 else None


def _state(details: Any) -> JobState:
    status = getattr(details, "status", "")
    status = getattr(status, "value", status)
    return JobState(
        submission_id=getattr(details, "submission_id", None),
        status=str(status),
        message=getattr(details, "message", None) or "",
        start_time=_seconds(getattr(details, "start_time", None)),
        end_time=_seconds(getattr(details, "end_time", None)),
        metadata=dict(getattr(details, "metadata", None) or {}),
        entrypoint=getattr(details, "entrypoint", None) or "",
        job_id=getattr(details, "job_id", None),
        error_type=getattr(details, "error_type", None),
        driver_exit_code=getattr(details, "driver_exit_code", None),
    )


def _job_info(client, address: ClusterAddress, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except Exception as e:  # noqa: BLE001
        raise translate(e, address, submission_id) from None


def _exists(client, address: ClusterAddress, submission_id: str) -> bool:
    try:
        _job_info(client, address, submission_id)
    except ClusterError as e:
        if str(e) == str(no_job(address, submission_id)):
            return False
        raise
    return True


def _str_metadata(metadata: dict | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


# --------------------------------------------------------------------------- operations


def submit(
    address,
    entrypoint: str,
    submission_id: str,
    runtime_env: dict | None = None,
    metadata: dict | None = None,
    *,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    entrypoint_memory: int | None = None,
    entrypoint_resources: dict[str, float] | None = None,
) -> bool:
    """Submit ``entrypoint`` as job ``submission_id``; False if that id already exists.

    A job runs at most once per submission id: the id is looked up first, and the cluster's own
    "already exists" refusal (a concurrent submit) also returns False. Non-string metadata values
    are stored as JSON text (Ray keeps metadata as ``dict[str, str]``).
    """
    if not submission_id or not isinstance(submission_id, str):
        raise ValueError("submit() needs a non-empty submission_id")
    client, addr = _client_and_address(address)
    if _exists(client, addr, submission_id):
        return False
    kwargs: dict[str, Any] = {}
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
    if entrypoint_memory is not None:
        kwargs["entrypoint_memory"] = entrypoint_memory
    if entrypoint_resources:
        kwargs["entrypoint_resources"] = entrypoint_resources
    try:
        client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=_str_metadata(metadata),
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001
        if "already exists" in str(e):
            return False
        raise translate(e, addr) from None
    return True


def status(address, submission_id: str) -> JobState:
    """The job's state; ClusterError "no job 'X' on cluster URL" if it does not exist."""
    client, addr = _client_and_address(address)
    return _state(_job_info(client, addr, submission_id))


def logs(address, submission_id: str) -> str:
    """Everything the job's driver has printed so far."""
    client, addr = _client_and_address(address)
    _job_info(client, addr, submission_id)
    try:
        return client.get_job_logs(submission_id)
    except Exception as e:  # noqa: BLE001
        raise translate(e, addr, submission_id) from None


def tail_logs(address, submission_id: str) -> Iterator[str]:
    """Follow the job's logs: chunks of text until the job ends (sync over Ray's async tail).

    Runs its own event loop, so call it from ordinary (non-async) code. Closing the iterator
    early (``break``) closes the connection.
    """
    client, addr = _client_and_address(address)
    _job_info(client, addr, submission_id)
    return _tail(client, addr, submission_id)


def _tail(client, addr: ClusterAddress, submission_id: str) -> Iterator[str]:
    import asyncio

    agen = client.tail_job_logs(submission_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                with warnings.catch_warnings():
                    # Ray 2.60's tail passes ssl=None to aiohttp, which warns about it.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    chunk = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            except Exception as e:  # noqa: BLE001
                raise translate(e, addr, submission_id) from None
            yield chunk
    finally:
        try:
            loop.run_until_complete(agen.aclose())
        except Exception:  # noqa: BLE001 - best effort on close
            pass
        loop.close()


def stop(address, submission_id: str) -> bool:
    """Ask the job to stop (SIGTERM, then kill). True if it was still running."""
    client, addr = _client_and_address(address)
    _job_info(client, addr, submission_id)
    try:
        return bool(client.stop_job(submission_id))
    except Exception as e:  # noqa: BLE001
        raise translate(e, addr, submission_id) from None


def list_jobs(address) -> list[JobState]:
    """Every job the cluster knows, oldest first."""
    client, addr = _client_and_address(address)
    try:
        jobs = client.list_jobs()
    except Exception as e:  # noqa: BLE001
        raise translate(e, addr) from None
    states = [_state(j) for j in jobs]
    states.sort(key=lambda s: (s.start_time or 0.0, s.submission_id or s.job_id or ""))
    return states


def wait(
    address,
    submission_id: str,
    *,
    timeout: float = 600.0,
    poll: float = 1.0,
    until: frozenset[str] | set[str] = TERMINAL_STATUSES,
) -> JobState:
    """Poll until the job's status is in ``until`` (default: a terminal status).

    Raises ClusterError if ``timeout`` seconds pass first.
    """
    client, addr = _client_and_address(address)
    deadline = time.monotonic() + timeout
    while True:
        state = _state(_job_info(client, addr, submission_id))
        if state.status in until:
            return state
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"job '{submission_id}' on {addr.display} is still {state.status} after {timeout:g} s"
            )
        time.sleep(poll)
