"""A real Ray head for tests: `cluster.local.start_head` on free loopback ports.

Each head has its own temp dir (removed on stop), a small object store, one CPU, and is
stopped by its own PID / process group (never `ray stop`, which would stop every Ray on the
machine). With ``auth=True`` it runs with ``RAY_AUTH_MODE=token`` and a fresh random token
given through ``RAY_AUTH_TOKEN`` (so nothing is written to ``~/.ray``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from linegen.cluster.address import ClusterAddress
from linegen.cluster.local import HeadProcess, free_port, start_head

# Keep Ray's shared-memory store small: test jobs move almost no data.
_OBJECT_STORE_BYTES = 200 * 1024 * 1024


@dataclass
class TestHead:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    head: HeadProcess
    token: str | None

    @classmethod
    def start(cls, *, auth: bool = False, num_cpus: int = 1, ready_timeout: float = 120.0) -> TestHead:
        token = secrets.token_hex(32) if auth else None
        env: dict[str, str | None] = {
            # The head must not pick up this machine's Ray settings.
            "RAY_ADDRESS": None,
            "RAY_API_SERVER_ADDRESS": None,
            "RAY_AUTH_TOKEN_PATH": None,
            "RAY_AUTH_MODE": "token" if auth else "disabled",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        head = start_head(
            port_dashboard=free_port(),
            port_gcs=free_port(),
            temp_dir=None,  # a fresh /tmp/rayh-* dir, removed by stop()
            env=env,
            num_cpus=num_cpus,
            extra_args=[f"--object-store-memory={_OBJECT_STORE_BYTES}"],
            ready_timeout=ready_timeout,
            die_with_parent=True,
        )
        test_head = cls(head=head, token=token)
        try:
            test_head.wait_for_job_agent(ready_timeout)
        except BaseException:
            head.stop()
            raise
        return test_head

    def wait_for_job_agent(self, timeout: float) -> None:
        """Until the head accepts a job. The dashboard answers before the node's agent has
        registered with it, and a submission in between is refused ("No available agent to
        submit job"); one shared head serves the whole session, so it is made ready once here."""
        import time
        import uuid

        from linegen.cluster import jobs_api

        deadline = time.monotonic() + timeout
        while True:
            try:
                jobs_api.submit(self.address(), "true", f"ready-probe-{uuid.uuid4().hex[:8]}")
                return
            except jobs_api.ClusterError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @property
    def url(self) -> str:
        return self.head.url

    def address(self, token: str | None = None) -> ClusterAddress:
        """The head's address; by default with the right token (if it has one)."""
        return self.head.address(token=self.token if token is None else token)

    def address_without_token(self) -> ClusterAddress:
        return self.head.address(token=None)

    def stop(self) -> None:
        self.head.stop()
