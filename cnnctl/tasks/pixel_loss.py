"""Segmentation's own Keras loss: sparse cross-entropy and/or Dice over the classes, pixels
of `ignore_index` left out of both. Imported only where Keras is loaded (training, and before a
saved model that names it is loaded); `cnnctl>PixelLoss` is on the model-file allow-list.

Plain sparse cross-entropy compiles Keras' own `SparseCategoricalCrossentropy(ignore_class=)`;
this class is for `dice` and `crossentropy_dice`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

SMOOTH = 1.0  # Dice's smoothing: a class absent from both masks of an image scores 1


@keras.saving.register_keras_serializable(package="cnnctl", name="PixelLoss")
class PixelLoss(keras.losses.Loss):
    """`crossentropy` * CE + `dice` * (1 - mean Dice over classes), per image.

    y_true: (batch, H, W) class indices (or `ignore_index`); y_pred: (batch, H, W, classes)
    probabilities.
    """

    def __init__(
        self,
        classes: int,
        ignore_index: int = 255,
        crossentropy: float = 1.0,
        dice: float = 1.0,
        name: str = "pixel_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.classes = int(classes)
        self.ignore_index = int(ignore_index)
        self.crossentropy = float(crossentropy)
        self.dice = float(dice)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """A weight per pixel (streamed pairs give each pixel its image's weight: 0 where the
        image failed to decode) counts per image, as this loss does: its largest."""
        if sample_weight is not None and len(sample_weight.shape) == 3:
            sample_weight = ops.max(sample_weight, axis=(1, 2))
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.cast(y_pred, "float32")
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (batch, H, W, 1)
            labels = ops.squeeze(labels, axis=-1)
        valid = ops.cast(ops.not_equal(labels, self.ignore_index), "float32")
        safe = ops.where(ops.not_equal(labels, self.ignore_index), labels, 0)
        truth = ops.one_hot(safe, self.classes) * valid[..., None]
        axes = (1, 2)
        loss = 0.0
        if self.crossentropy:
            p = ops.clip(y_pred, 1e-7, 1.0)
            pixel = -ops.sum(truth * ops.log(p), axis=-1)
            counted = ops.maximum(ops.sum(valid, axis=axes), 1.0)
            loss = loss + self.crossentropy * ops.sum(pixel, axis=axes) / counted
        if self.dice:
            guess = y_pred * valid[..., None]
            overlap = ops.sum(truth * guess, axis=axes)
            total = ops.sum(truth, axis=axes) + ops.sum(guess, axis=axes)
            score = (2.0 * overlap + SMOOTH) / (total + SMOOTH)
            loss = loss + self.dice * (1.0 - ops.mean(score, axis=-1))
        return loss

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "classes": self.classes,
            "ignore_index": self.ignore_index,
            "crossentropy": self.crossentropy,
            "dice": self.dice,
        }
