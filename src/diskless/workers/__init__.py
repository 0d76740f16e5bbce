"""Worker processes steered over a pipe: the plumbing the iSCSI and TFTP services share."""

from .endpoint import Worker, detach, report_changes, run_worker, serve_until_stopped, stop_workers

__all__ = [
    "Worker",
    "detach",
    "report_changes",
    "run_worker",
    "serve_until_stopped",
    "stop_workers",
]
