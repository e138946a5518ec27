"""Which executor a command asks for (``--executor``, ``--workers``, ``--ray-address``)."""

from __future__ import annotations

from ..errors import UserError
from .base import Executor, InProcess
from .local import LocalProcesses

EXECUTORS = ("local", "ray")


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None
                  ) -> Executor:
    """``local`` with one worker: this process; with more: worker processes on this
    machine; ``ray``: Ray tasks, on the cluster at ``address`` (or ``RAY_ADDRESS``; with
    neither, a Ray instance started here)."""
    if kind not in EXECUTORS:
        raise UserError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if address and kind != "ray":
        raise UserError("--ray-address joins a Ray cluster: it needs --executor ray")
    if kind == "ray":
        from .ray_cluster import RayExecutor

        return RayExecutor(workers, address)
    return InProcess() if workers == 1 else LocalProcesses(workers)
