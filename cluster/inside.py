"""The Jobs API as seen from inside a running Ray job (e.g. a driver waiting for another job).

A job's driver does not need the URL or token the user gave on their laptop (that URL may be an
SSH tunnel, and the token must not travel in job metadata). Inside the cluster Ray itself knows
both: ``RAY_ADDRESS`` is the GCS address, from which Ray's ``JobSubmissionClient()`` (no address)
reads the dashboard URL the head registered (usually http://127.0.0.1:8265 on the head), and
with ``RAY_AUTH_MODE=token`` it sends the node's own token (``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` on that node). Verified against Ray 2.60 with
a token-auth head: a driver's environment has ``RAY_ADDRESS=<ip>:<gcs port>`` and the client
authenticates without any argument.

Best effort: any failure returns None (the caller keeps relying on storage markers).
"""
from __future__ import annotations

import os

from linegen.cluster.jobs_api import JobState, _state


def jobs_from_inside(timeout: float = 10.0) -> list[JobState] | None:
    """Every job of the cluster this process runs in, or None if they cannot be read."""
    if not os.environ.get("RAY_ADDRESS"):
        return None
    try:
        from linegen.cluster import jobs_api

        if jobs_api._CLIENT_CLASS is None:
            jobs_api._CLIENT_CLASS = jobs_api._client_class()
        cls = jobs_api._CLIENT_CLASS
        client = cls(None)  # the address from RAY_ADDRESS (GCS) -> the dashboard URL it registered
        client.linegen_timeout = (min(timeout, 5.0), timeout)
        return [_state(j) for j in client.list_jobs()]
    except Exception:  # noqa: BLE001 - best effort by design
        return None
