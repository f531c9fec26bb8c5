"""run.json: whether a run is running, finished, interrupted or failed, and by which process."""

from __future__ import annotations

import os
import time
from typing import Any

from cnnctl.runs.folder import Run
from cnnctl.runs.io import write_json


def set_status(run: Run, status: str, **extra: Any) -> None:
    data = {"status": status, "pid": os.getpid(), "updated": time.time()}
    data = {**run.status_data(), **data}
    data.setdefault("started", time.time())
    write_json(run.run_json, {**data, **extra})


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


def running_pid(run: Run) -> int | None:
    """The pid of the process training `run` right now, if one is."""
    pid = run.status_field("pid")
    if (
        run.status_field("status") == "running"
        and type(pid) is int
        and pid != os.getpid()
        and pid_alive(pid)
    ):
        return pid
    return None
