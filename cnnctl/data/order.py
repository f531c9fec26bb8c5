"""The order of an epoch's images: one home, so the in-memory and the streamed routes agree
batch for batch, and a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import tensorflow as tf


def shuffled(n: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """Epoch `epoch`'s order of `n` images: a function of (seed, epoch) only, so that
    a resumed run, and the streamed route, see exactly the same batches."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
    )
