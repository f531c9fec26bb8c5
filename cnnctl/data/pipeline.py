"""tf.data input pipelines: raw uint8 pixels in memory -> shuffled batches, no Python per step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cnnctl.data.order import shuffled


def _gather(x: tf.Tensor, y: tf.Tensor, num_classes: int, one_hot: bool):
    def take(index: tf.Tensor):
        images = tf.cast(tf.gather(x, index), tf.float32)
        labels = tf.gather(y, index)
        return images, (tf.one_hot(labels, num_classes) if one_hot else labels)

    return take


def training_batches(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    num_classes: int,
    one_hot: bool,
    first_epoch: int,
    epochs: int,
    joint: Sequence[Any] = (),
    ignore_index: int = 255,
    pixel_weights: np.ndarray | None = None,
) -> tuple[tf.data.Dataset, int]:
    """Batches for epochs `first_epoch`..`epochs - 1`, and the number of steps per epoch.

    Each epoch's order depends only on (seed, epoch), so a resumed run sees
    exactly the batches the uninterrupted run would have seen. `joint`: augmentation layers
    that move each image and its mask together (labels are masks); `pixel_weights`: a weight
    per class, given to each mask pixel's loss as its sample weight (ignored pixels: 0).
    """
    if not isinstance(x, np.ndarray):  # images still in files: streamed
        from cnnctl.data import stream

        batches, steps = stream.training_batches(
            x,
            y,
            batch_size=batch_size,
            seed=seed,
            num_classes=num_classes,
            one_hot=one_hot,
            first_epoch=first_epoch,
            epochs=epochs,
        )
        if np.ndim(y) == 3:  # masks: moved and weighed as in memory, a weight per pixel
            batches = batches.map(_per_pixel(joint, ignore_index, pixel_weights))
        return batches, steps
    n = len(x)
    x_t, y_t = tf.constant(x), tf.constant(y)

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(shuffled(n, seed, epoch)).batch(batch_size)

    batches = (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_order)
        .map(_gather(x_t, y_t, num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE)
    )
    if joint:
        batches = batches.map(together(joint, ignore_index))
    if pixel_weights is not None:
        batches = batches.map(weighed(pixel_weights, ignore_index))
    return batches.prefetch(tf.data.AUTOTUNE), math.ceil(n / batch_size)


def _per_pixel(joint: Sequence[Any], ignore_index: int, pixel_weights: np.ndarray | None):
    """Streamed (images, masks, weight per image) -> the same (masks int32) through `together`
    and `weighed`, the weight spread over the pixels (Keras would broadcast a weight per image
    along the width): an image that failed to decode (weight 0) gives its pixels weight 0."""
    move = together(joint, ignore_index) if joint else None
    weigh = weighed(pixel_weights, ignore_index) if pixel_weights is not None else None

    def apply(images: tf.Tensor, masks: tf.Tensor, weights: tf.Tensor):
        masks = tf.cast(masks, tf.int32)  # kept 8 or 16 bit; int32 as in memory
        if move is not None:
            images, masks = move(images, masks)
        pixels = tf.ones(tf.shape(masks), tf.float32)
        if weigh is not None:
            _, _, pixels = weigh(images, masks)
        return images, masks, pixels * weights[:, None, None]

    return apply


def weighed(weights: np.ndarray, ignore_index: int):
    """(images, masks) -> (images, masks, the weight of each pixel's class; 0 where ignored)."""
    table = tf.constant(np.append(weights, 0.0).astype(np.float32))
    classes = len(weights)

    def apply(images: tf.Tensor, masks: tf.Tensor):
        index = tf.where(masks == ignore_index, classes, tf.minimum(masks, classes))
        return images, masks, tf.gather(table, tf.cast(index, tf.int32))

    return apply


def together(layers: Sequence[Any], ignore_index: int):
    """A batch of images and masks through the same random geometric layers: the mask rides as
    one more channel. It is shifted by one first, so that pixels a layer fills with 0 (from
    outside the image, fill_mode constant) come back as ignore_index."""

    def apply(images: tf.Tensor, masks: tf.Tensor):
        stacked = tf.concat([images, tf.cast(masks + 1, tf.float32)[..., None]], axis=-1)
        for layer in layers:
            stacked = layer(stacked, training=True)
        moved = tf.cast(tf.round(stacked[..., -1]), masks.dtype)
        return stacked[..., :-1], tf.where(
            moved == 0, tf.cast(ignore_index, masks.dtype), moved - 1
        )

    return apply


def eval_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, num_classes: int, one_hot: bool):
    """Batches in order, for validation, evaluation and prediction."""
    if not isinstance(
        x, np.ndarray
    ):  # images still in files: streamed (with weights: 0 if unreadable)
        from cnnctl.data import stream

        batches = stream.eval_batches(
            x, y, batch_size=batch_size, num_classes=num_classes, one_hot=one_hot
        )
        return batches.map(_per_pixel((), 255, None)) if np.ndim(y) == 3 else batches
    x_t, y_t = tf.constant(x), tf.constant(y)
    return (
        tf.data.Dataset.range(len(x))
        .batch(batch_size)
        .map(_gather(x_t, y_t, num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
