"""Fine-tuning: thaw the Backbone and go on at a lower rate.

After `train.fine_tune.at_epoch` epochs.

The recipe of Keras' transfer-learning guide: train the new head on the frozen
backbone first, then unfreeze it (all of it, or its last K layers) and recompile
with a small learning rate, keeping every BatchNormalization layer frozen, which
in Keras 3 also keeps it in inference mode. The thawed flags are part of the
saved model, so a checkpoint taken after the thaw resumes thawed; one taken
before it thaws at the same epoch as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras

from cnnctl.config import Config, FineTuneConfig
from cnnctl.model.blocks import PREPROCESS
from cnnctl.model.builder import compile_model
from cnnctl.training.schedule import scheduled_lr


def backbones(model: keras.Model) -> list[keras.Model]:
    """The keras.applications models inside the model's Backbone blocks."""
    return [
        inner
        for block in model.layers
        if block.name.startswith("backbone_")
        for inner in block.layers
        if isinstance(inner, keras.Model)
    ]


def thaw(model: keras.Model, rule: FineTuneConfig) -> None:
    """Make the backbones trainable (or their last K layers).

    BatchNormalization and preprocessing excepted.
    """
    for block in model.layers:
        if block.name.startswith("backbone_"):
            block.trainable = True
            block.get_layer(PREPROCESS).trainable = False
    for app in backbones(model):
        app.trainable = True
        frozen = app.layers[: -rule.last] if rule.last is not None else []
        for layer in frozen:
            layer.trainable = False
        for layer in app.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


class FineTune(keras.callbacks.Callback):
    """At the start of epoch `at_epoch + 1`: thaw, recompile with the fine-tuning learning rate."""

    def __init__(self, config: Config, steps_per_epoch: int) -> None:
        super().__init__()
        self.config, self.steps = config, steps_per_epoch
        self.rule = config.train.fine_tune

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        rule, train = self.rule, self.config.train
        if rule is None or epoch < rule.at_epoch:
            return
        if epoch == rule.at_epoch:
            thaw(self.model, rule)
            strategy = getattr(self.model, "distribute_strategy", None)
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                compile_model(
                    self.model, self.config, self.steps
                )  # a fresh optimizer for the new weights
                self.model.optimizer.learning_rate = rule.learning_rate
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.make_train_function(
                force=True
            )  # fit's loop calls whatever this attribute holds
        # Any schedule starts again from the fine-tuning rate (after EpochRecorder set the head's).
        lr = scheduled_lr(
            train.lr_schedule,
            rule.learning_rate,
            epoch - rule.at_epoch,
            train.epochs - rule.at_epoch,
        )
        if lr is not None:
            self.model.optimizer.learning_rate = lr
