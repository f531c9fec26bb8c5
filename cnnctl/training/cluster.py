"""A multi-worker run when a worker stops: every worker stops at the same step, or none hangs.

Two protocols, both needed because a worker only knows its own signals:
- A stop (SIGTERM from a preempting scheduler, Ctrl-C) is agreed on: every 8 steps the
  workers all-reduce their stop requests, so every worker sees the same answer after the same
  step and raises `StopRequested` at the same step boundary. Epoch checkpoints are whole; the
  run resumes from the last finished epoch.
- A lost worker (killed, its machine gone) fails the others' collectives: TensorFlow's
  coordination service notices the missing heartbeats (about 10 s), and every collective gives
  up after `train.distribute_timeout` seconds. `worker_lost` turns that error into one line.
"""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Any

import keras

from cnnctl.errors import WorkerLost
from cnnctl.runs import Run
from cnnctl.training.distribute import cluster

TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
# What a collective fails with when a peer is gone (UnavailableError...), or never answers.
LOST_ERRORS = (
    "UnavailableError",
    "DeadlineExceededError",
    "AbortedError",
    "CancelledError",
    "FailedPreconditionError",
)
PROBE_SECONDS = 2.0
PROBE_LIMIT = 16  # peers probed at most: bounded time when many are gone


def is_multi_worker(model: keras.Model) -> bool:
    import tensorflow as tf

    return isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)


class SharedStop(keras.callbacks.Callback):
    """Tells every worker of a cluster to stop after the same step when any one was asked to.

    Every `EVERY` steps, between two training steps, the workers all-reduce (sum) their wishes to
    stop. All workers count the same steps, so all take part in the same all-reduces, in the same
    order as the training steps' own, and all see the same answer after the same step. (Checking
    after every step cost about 7 ms a step on loopback, a third of a tiny model's step.)
    """

    EVERY = 8

    def __init__(self, model: keras.Model, local: dict[str, bool]) -> None:
        super().__init__()
        import tensorflow as tf

        self.local, self.agreed = local, {"requested": False}
        self.steps = 0
        strategy = model.distribute_strategy
        self.wish = tf.Variable(0.0, trainable=False, name="stop_wish")  # this worker's own

        def add_up() -> Any:
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(self.wish))

        self.add_up = tf.function(
            lambda: strategy.experimental_local_results(strategy.run(add_up))[0]
        )

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.steps += 1
        if self.steps % self.EVERY:
            return
        self.wish.assign(1.0 if self.local["requested"] else 0.0)
        if float(self.add_up()) > 0:
            self.agreed["requested"] = True


def shared_stop(
    model: keras.Model, stop: dict[str, bool]
) -> tuple[list[keras.callbacks.Callback], dict[str, bool]]:
    """The callbacks that make `stop` a decision of all workers, and the flag to act on.

    Alone, the process acts on its own signals: no callbacks, the same flag.
    """
    if not is_multi_worker(model):
        return [], stop
    agreement = SharedStop(model, stop)
    return [agreement], agreement.agreed


def worker_lost(
    error: BaseException, model: keras.Model, run: Run, epochs_done: int, epochs: int
) -> WorkerLost | None:
    """The one-line error for a collective that failed because a worker is gone, else None."""
    spec = cluster()
    if spec is None or type(error).__name__ not in LOST_ERRORS or not is_multi_worker(model):
        return None
    return WorkerLost(lost_line(str(error), spec, run, epochs_done, epochs))


def lost_line(text: str, spec: dict[str, Any], run: Run, epochs_done: int, epochs: int) -> str:
    """One line: who was lost (as far as can be told), what is saved, how to go on."""
    names = lost_tasks(text, spec)
    if names:
        who = ", ".join(names) + (" was lost" if len(names) == 1 else " were lost")
    elif "timed out" in text:
        who = "a worker did not answer within train.distribute_timeout"
    else:
        who = "a worker was lost"
    return (
        f"{who} in epoch {epochs_done + 1}; {epochs_done} of {epochs} epochs are saved in "
        f"{run.path}; restart every worker with: cnnctl train --resume {run.path}"
    )


def lost_tasks(text: str, spec: dict[str, Any]) -> list[str]:
    """The peers TensorFlow names as unhealthy, else those whose port no longer answers."""
    me = (spec["task"]["type"], int(spec["task"]["index"]))
    tasks = {
        (job, int(index)): address
        for job, addresses in spec["cluster"].items()
        if isinstance(addresses, list)
        for index, address in enumerate(addresses)
    }
    blamed = text.split("unhealthy", 1)[1] if "unhealthy" in text else ""
    named = [(job, int(index)) for job, index in TASK.findall(blamed)]
    if not named:
        peers = [task for task in tasks if task != me][:PROBE_LIMIT]
        named = [task for task in peers if not _answers(str(tasks[task]))]
    return [
        f"{job} {index} ({tasks.get((job, index), '?')})"
        for job, index in dict.fromkeys(named)
        if (job, index) != me
    ]


def _answers(address: str) -> bool:
    """Whether something still listens at host:port (a killed worker's port refuses at once)."""
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError, ValueError):
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            return True
    return False
