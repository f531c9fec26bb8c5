"""Precise BatchNorm: moving statistics recomputed over training batches before each validation.

BatchNormalization normalizes with batch statistics while training and with its moving
averages at inference. At Keras' momentum of 0.99 the averages need several hundred steps to
forget their start (mean 0, variance 1) and to follow weights that still move fast, so a short
run validates a model whose statistics describe no version of it: training accuracy 0.86,
validation near chance. As fvcore's `update_bn_stats` ("precise BN"), this callback runs a
fixed sample of training batches through the model in training mode before each validation and
sets each layer's moving mean and variance to the plain average of those batches' statistics.
The epoch's saved models (model.keras, checkpoints/last.keras) carry these statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from cnnctl.data.pipeline import eval_batches

AUTO_MEMORIES = 5  # `auto`: on when the run is shorter than this many memories of an average
BATCHES = 100  # training batches averaged (fvcore's default is 200 of its larger batches)
NEAR_CHANCE = 2.0  # validation accuracy under this many times chance ...
HIGH_TRAIN = 0.5  # ... while training accuracy is above this: say so, once


def batch_norms(layer: Any) -> Iterator[Any]:
    """Every BatchNormalization layer inside `layer`, also in Residual and Backbone sub-models."""
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for inner in getattr(layer, "layers", None) or ():
        yield from batch_norms(inner)


def precise_bn_wanted(setting: str | bool, model: Any, total_steps: int) -> bool:
    """`train.precise_bn`: true, false, or auto (short runs of models with BatchNormalization).

    "Short" is measured against the slowest moving average: at momentum m an average forgets
    its start over about 1 / (1 - m) steps (its memory), 100 at Keras' 0.99 (so 500 steps),
    1,000 at the 0.999 of MobileNetV2 and EfficientNet trained from scratch in a Backbone.
    """
    trainable = [layer for layer in batch_norms(model) if layer.trainable]
    if setting is False or not trainable:
        return False
    slowest = max(float(layer.momentum) for layer in trainable)
    memory = 1.0 / max(1.0 - slowest, 1e-6)
    return setting is True or total_steps < AUTO_MEMORIES * memory


class PreciseBN(keras.callbacks.Callback):
    """Recompute BatchNormalization's moving statistics once an epoch, before its validation.

    Keras calls `on_test_begin` of fit's callbacks before the epoch's validation, and the run's
    files are written later, in `on_epoch_end`: validation and the saved models see the same
    statistics. `images` is an iterable of image batches (a fixed sample of training data).
    """

    def __init__(self, images: Any, batches: int = BATCHES) -> None:
        super().__init__()
        self.images, self.batches = images, batches
        self._due = False
        self._forward = None

    def on_train_begin(self, logs=None) -> None:
        import tensorflow as tf

        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            self.batches = 0  # replicas would each average their own batches: left as Keras has it

        # Traced once, while every momentum is 0 (Keras reads it as a constant when tracing);
        # update_bn_stats sets it to 0 around every call. Eager calls took 2 s an epoch here.
        self._forward = tf.function(lambda x: self.model(x, training=True), reduce_retracing=True)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._due = True

    def on_test_begin(self, logs=None) -> None:
        if self._due:
            self._due = False
            update_bn_stats(self.model, self.images, self.batches, self._forward)


def update_bn_stats(model: Any, images: Any, batches: int = BATCHES, forward: Any = None) -> int:
    """Set trainable BatchNormalization layers' moving mean and variance to the average of their
    batch statistics over up to `batches` batches of `images`; returns the batches used.

    With momentum 0 a training-mode call leaves exactly the batch's statistics in the moving
    variables; they are read after each batch, averaged here, and written back at the end.
    Frozen layers (a Backbone's pretrained statistics) are left alone. `forward`: the model's
    training-mode call, traced with every momentum at 0 (default: eager calls).
    """
    layers = [layer for layer in batch_norms(model) if layer.trainable]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in layers]
    used = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        for batch in images:
            if used == batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            (forward or (lambda x: model(x, training=True)))(x)
            for index, layer in enumerate(layers):
                means[index] += np.asarray(layer.moving_mean, np.float64)
                variances[index] += np.asarray(layer.moving_variance, np.float64)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    if used:
        for layer, mean, variance in zip(layers, means, variances, strict=True):
            layer.moving_mean.assign((mean / used).astype(layer.moving_mean.dtype))
            layer.moving_variance.assign((variance / used).astype(layer.moving_variance.dtype))
    return used


class NearChance(keras.callbacks.Callback):
    """Say once when validation accuracy sits near chance while training accuracy is high."""

    def __init__(self, classes: int, display: Any, precise: bool) -> None:
        super().__init__()
        self.classes, self.display, self.precise = classes, display, precise
        self.said = False

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        train, val = logs.get("accuracy"), logs.get("val_accuracy")
        if self.said or self.display is None or train is None or val is None:
            return
        chance = 1 / max(self.classes, 1)
        if val < NEAR_CHANCE * chance and train > max(HIGH_TRAIN, val + 0.3):
            self.said = True
            self.display.warn(near_chance_message(epoch + 1, train, val, chance, self.precise))


def near_chance_message(epoch: int, train: float, val: float, chance: float, precise: bool) -> str:
    """The warning's words: what was seen and the likely cause."""
    seen = (
        f"epoch {epoch}: validation accuracy {val:.2f} is near chance ({chance:.2f}) while "
        f"training accuracy is {train:.2f}; "
    )
    if precise:
        return seen + "check that validation images are prepared like the training ones"
    return seen + (
        "BatchNormalization's moving statistics lag in short runs: set train.precise_bn: true"
    )


def precise_bn_callbacks(
    config: Any, model: Any, dataset: Any, steps: int, display: Any
) -> list[keras.callbacks.Callback]:
    """The callbacks `fit` adds: PreciseBN where wanted, and the near-chance warning."""
    train = config.train
    wanted = precise_bn_wanted(train.precise_bn, model, steps * train.epochs)
    callbacks: list[keras.callbacks.Callback] = [
        NearChance(len(dataset.class_names), display, wanted)
    ]
    if wanted:
        callbacks.insert(0, PreciseBN(training_sample(config, dataset)))
    return callbacks


def training_sample(config: Any, dataset: Any) -> Any:
    """The same BATCHES training batches each epoch: a seeded sample, in training's batch size."""
    train = config.train
    count = min(len(dataset.x_train), BATCHES * train.batch_size)
    pick = np.sort(np.random.default_rng(config.seed).permutation(len(dataset.x_train))[:count])
    return eval_batches(
        dataset.x_train[pick],
        dataset.y_train[pick],
        batch_size=train.batch_size,
        num_classes=len(dataset.class_names),
        one_hot=train.one_hot,
    )
