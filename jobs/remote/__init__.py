"""linegen jobs on a remote Ray cluster: submit, resume, status, list, logs, cancel, cost, monitor.

Each operation combines what Ray knows (cluster.jobs_api: the job's attempts and their states)
with what the job wrote (jobs.progress: plan, commits, stats, markers), and returns a dataclass
the CLI prints as a table or, through ``to_dict()``, as JSON.

- `context`  where the commands point (cluster, output root, prices) from flags, config, env;
- `attempts` how the Ray jobs of one linegen job are named, grouped and turned into one state;
- `shipping` the code and environment each attempt runs with;
- `submit`   submit and resume;
- `status`   finding a job and its status, listing jobs;
- `control`  logs and cancel;
- `monitor`  the cluster snapshot for `linegen monitor`, and a job's cost report.
"""
from linegen.jobs.remote.attempts import STATES
from linegen.jobs.remote.context import Context, make_context, parse_headers
from linegen.jobs.remote.control import CancelResult, cancel, logs
from linegen.jobs.remote.monitor import job_cost_report, monitor_snapshot
from linegen.jobs.remote.status import JobStatus, job_status, list_jobs
from linegen.jobs.remote.submit import Outcome, ResumeResult, SubmitResult, resume, submit

__all__ = ["STATES", "CancelResult", "Context", "JobStatus", "Outcome", "ResumeResult", "SubmitResult",
           "cancel", "job_cost_report", "job_status", "list_jobs", "logs", "make_context", "monitor_snapshot",
           "parse_headers", "resume", "submit"]
