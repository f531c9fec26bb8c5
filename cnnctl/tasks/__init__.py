"""The tasks wing: what a label is (`base.Task`), one module a task.

`task_of(config)` is the only place a task is chosen; everything else calls its methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnctl.config.schema import TASKS
from cnnctl.tasks.base import TARGET_STATS, Report, Task
from cnnctl.tasks.classification import Classification
from cnnctl.tasks.multilabel import Multilabel
from cnnctl.tasks.regression import Regression
from cnnctl.tasks.segmentation import Segmentation

if TYPE_CHECKING:
    from cnnctl.config import Config

REGISTRY: dict[str, type[Task]] = {
    task.name: task for task in (Classification, Multilabel, Regression, Segmentation)
}
if set(REGISTRY) != set(TASKS):  # the schema's choices and the modules here are one list
    raise ImportError(f"tasks {sorted(REGISTRY)} do not match the config's {sorted(TASKS)}")


def task_named(name: str) -> Task:
    """The task called `name` (a run's config, an exported file's metadata)."""
    return REGISTRY[name]()


def task_of(config: Config | None) -> Task:
    """The task a config asks for, with its settings; classification where there is no config
    (a bare model)."""
    task = task_named(config.task if config is not None else "classification")
    if config is not None:
        task.use_config(config)
    return task


__all__ = ["REGISTRY", "TARGET_STATS", "Report", "Task", "task_named", "task_of"]
