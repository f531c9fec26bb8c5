"""Which tf.distribute strategy a run uses, and which process of a cluster writes the run folder.

cnnctl builds nothing of its own here: `auto` is TensorFlow's MirroredStrategy when
more than one GPU is visible (else the default strategy), and `multi_worker` is
MultiWorkerMirroredStrategy with the cluster read from the standard TF_CONFIG.
The configured batch size is the global batch, split across replicas; the
learning rate is used as written, never rescaled.
"""

from __future__ import annotations

from typing import Any

from cnnctl.config import Config
from cnnctl.errors import ConfigError
from cnnctl.startup import cluster


def is_chief() -> bool:
    """The one process that writes the run folder.

    The chief, or worker 0 where there is no chief.
    """
    spec = cluster()
    if spec is None:
        return True
    task = spec["task"]
    if "chief" in spec["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def auto_strategy_name() -> str:
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"


def strategy_for(config: Config) -> Any:
    """The tf.distribute strategy for `train.distribute`."""
    import tensorflow as tf

    choice = config.train.distribute
    if choice == "auto":
        choice = auto_strategy_name()
    if choice == "none":
        return tf.distribute.get_strategy()
    if choice == "mirrored":
        return tf.distribute.MirroredStrategy()
    if cluster() is None:
        raise ConfigError(
            f"{config.where(('train', 'distribute'))}: multi_worker needs TF_CONFIG",
            "set TF_CONFIG on every worker (see the README's 'Several GPUs and machines')",
        )
    timeout = config.train.distribute_timeout
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def own_shares(model: Any, batches: Any) -> Any:
    """Streamed training batches as Keras must see them in a cluster: each worker's own share.

    The streamed route (data/stream.py) already gives each worker only its part of every
    global batch (and says so by turning tf.data's auto-sharding off). Handed to `fit` as a
    dataset, tf.distribute would still split each of those batches across the cluster's
    replicas (a worker's step then took half its share, and an epoch half the data);
    `distribute_datasets_from_function` takes them as they are. Other batches go through.
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    off = tf.data.experimental.AutoShardPolicy.OFF
    if (
        not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        or batches.options().experimental_distribute.auto_shard_policy != off
    ):
        return batches
    return strategy.distribute_datasets_from_function(lambda context: batches)


def prepare_multi_worker(model: Any, batches: Any) -> None:
    """Work around two gaps of Keras 3.15's `fit` under MultiWorkerMirroredStrategy.

    1. `fit` first averages one distributed batch with `strategy.reduce`, which this strategy
       refuses for an (images, labels) pair; cnnctl builds the model from a local batch instead.
    2. Each step's logs are averaged across workers with `strategy.reduce("MEAN", axis=0)`, which
       fails on scalars; the steps below return each value as a 1-element vector, so that the
       average is taken over workers, as intended, and Keras turns it back into a float.
    3. Several steps per call fail to compile under it ("You must feed a value for placeholder"),
       so a multi-worker run takes one step per call.
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(batches)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    model.steps_per_execution = 1
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(
            model,
            name,
            lambda data, step=step: {k: tf.reshape(v, [1]) for k, v in step(data).items()},
        )
