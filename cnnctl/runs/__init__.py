"""The run folder wing: paths and names (`folder`), atomic writes (`io`), process status
(`status`), the one-line summaries of `cnnctl runs` (`summary`) and the records the work
returns (`results`). Its public names are importable from here."""

from cnnctl.runs.folder import (
    FIRST_CONFIG,
    STATE_MEMBER,
    Run,
    clean_leftovers,
    create_run,
    find_run,
    list_runs,
    list_studies,
    run_of_model,
)
from cnnctl.runs.io import atomic_write, rows_to_csv, write_json, write_text
from cnnctl.runs.status import pid_alive, running_pid, set_status
from cnnctl.runs.summary import (
    RunSummary,
    StudySummary,
    checkpoint_is_whole,
    describe,
    describe_study,
    epoch_rows,
)

__all__ = [
    "FIRST_CONFIG",
    "STATE_MEMBER",
    "Run",
    "RunSummary",
    "StudySummary",
    "atomic_write",
    "checkpoint_is_whole",
    "clean_leftovers",
    "create_run",
    "describe",
    "describe_study",
    "epoch_rows",
    "find_run",
    "list_runs",
    "list_studies",
    "pid_alive",
    "rows_to_csv",
    "run_of_model",
    "running_pid",
    "set_status",
    "write_json",
    "write_text",
]
