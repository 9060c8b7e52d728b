"""Errors a user can act on, raised by jobs: the CLI prints them as one line and exits non-zero."""
from linegen.errors import UserError


class JobCancelled(UserError):
    """The job will not run: the job it waits for failed or was cancelled (the message says which)."""


class JobFailed(UserError):
    """Some shards failed after all their attempts; `.failed` maps each shard to its last error."""

    def __init__(self, job_id: str, failed: dict[str, str]):
        self.failed = failed
        lines = [f"job {job_id}: {len(failed)} shard(s) failed after all attempts:"]
        lines += [f"  {sid}: {err}" for sid, err in sorted(failed.items())]
        super().__init__("\n".join(lines))


__all__ = ["JobCancelled", "JobFailed", "UserError"]
