"""Images still on disk, streamed through tf.data: parallel decode and resize, batch, prefetch.

Memory is bounded by the batches in flight. A file that fails to decode keeps its
place in the batch as a blank image of weight 0, so batches, steps and a resumed
run's order are the same whatever fails; its row is recorded and reported.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cnnctl.data.images import ImageError, load_image
from cnnctl.data.maskfiles import FileMasks
from cnnctl.data.order import shuffled
from cnnctl.errors import DataError
from cnnctl.limits import EVAL_BATCH, limit, npy_header, open_regular
from cnnctl.startup import worker_of

TF_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}
# Batches decoded ahead of the model. Fixed, not AUTOTUNE: tf.data's autotuner grows its
# buffers the longer a run lasts, so memory would grow with the size of the dataset.
AHEAD = 2


class FileImages:
    """A read-only uint8 array (N, H, W, C) whose images stay in files (or in a decode cache).

    Code that needs only the length, the shape or a few images uses it as an array;
    the trainer streams it with `training_batches`.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(
        self,
        paths: np.ndarray,
        pillow: np.ndarray,
        image_shape: tuple[int, int, int],
        store: Path | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.paths, self.pillow = np.asarray(paths, dtype=object), np.asarray(pillow, dtype=bool)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.store = store  # a decode cache's images.npy; `rows` index into it
        self.rows = np.arange(len(self.paths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.skips: dict[Any, set[int]] = {}  # epoch (or "eval") -> rows that failed to decode
        self._mapping: dict[str, Any] = {}  # the decode cache mapped, shared with every part

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), *self.image_shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return decode_all(self[np.asarray([key])])[0][0]
        take = np.arange(len(self))[key]
        part = FileImages(
            self.paths[take], self.pillow[take], self.image_shape, self.store, self.rows[take]
        )
        part._mapping = self._mapping  # train, validation and test: one mapping of the cache
        return part

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All the pixels; an image that fails to decode is an error, never a silent blank.

        Code that can leave such images out uses `cnnctl.data.decoded`.
        """
        pixels, failed = decode_all(self)
        if failed:
            raise DataError(
                f"{self.paths[failed[0]]}: {self.reason(failed[0])}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                "replace or remove the file, then run again",
            )
        return pixels if dtype is None else pixels.astype(dtype)

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Paths (as bytes: any file name) and routes as tensors, made once and eagerly.

        A constant made inside a traced function (each epoch's pipeline is one) is copied
        into every graph that holds it: at 80,000 files that grew with the folder.
        """
        with tf.init_scope():
            return tf.constant([os.fsencode(p) for p in self.paths], tf.string), tf.constant(
                self.pillow
            )

    def mapped(self) -> tuple[Any, int]:
        """The open decode cache (opened once, shared by every part) and where its pixels start."""
        if not self._mapping:
            self._mapping["stream"], self._mapping["images"] = _mapped(self.store, self.image_shape)
        return self._mapping["stream"], self._mapping["images"]

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def reason(self, position: int) -> str:
        """Why a file failed to decode, in Pillow's words where it has some."""
        if self.store is not None:  # decoded before: only its copy can be missing
            return (
                f"the decode cache was cut short while in use; delete it: rm -r {self.store.parent}"
            )
        try:
            h, w, c = self.image_shape
            load_image(Path(self.paths[position]), h, w, c)
        except ImageError as error:
            return str(error)
        return "TensorFlow could not decode it"


# --------------------------------------------------------------------------- decoding


def decoder(image_shape: tuple[int, int, int], pillow_possible: bool = True):
    """(path, use_pillow) -> uint8 (H, W, C): TensorFlow's decoders, Pillow for the rest.

    Without `pillow_possible` (no file needs Pillow) the branch is left out: each tf.cond
    in a tf.data map costs about as much as decoding a small JPEG. The function is traced
    once per process and shape (and limits): a tf.data map that calls it traces only the call.
    """
    most = min(limit("pixels"), limit("image_bytes") // 4)  # TensorFlow may decode RGBA first
    return _traced_decoder(tuple(image_shape), pillow_possible, most)


@functools.lru_cache(maxsize=16)
def _traced_decoder(image_shape: tuple[int, int, int], pillow_possible: bool, most: int):
    height, width, channels = image_shape

    def with_pillow(path: bytes) -> np.ndarray:
        return load_image(Path(os.fsdecode(path)), height, width, channels)

    def with_tf(path: tf.Tensor) -> tf.Tensor:
        data = tf.io.read_file(path)
        # The size is checked on the bytes decoded here, whatever a header check said before
        # (its memo is a hint for speed, and a file can change): over the limits, the image
        # fails like a damaged one, is left out and reported (with Pillow's reason).
        small = tf.debugging.assert_less_equal(
            _declared_pixels(data), tf.constant(most, tf.int64), message="image too large"
        )
        with tf.control_dependencies([small]):  # in a tf.data map, no order without this
            # channels=3: grey repeated, alpha dropped; the same pixels as Pillow's convert("RGB")
            x = tf.io.decode_image(data, channels=3, expand_animations=False)
        if channels == 1:
            x = tf.image.rgb_to_grayscale(x)  # exact on grey images (repeated channels)
        same = tf.reduce_all(tf.shape(x)[:2] == [height, width])
        return tf.cond(
            same,
            lambda: x,
            lambda: tf.cast(
                tf.clip_by_value(
                    tf.round(tf.image.resize(x, (height, width), antialias=True)), 0, 255
                ),
                tf.uint8,
            ),
        )

    def decode(path: tf.Tensor, pillow: tf.Tensor) -> tf.Tensor:
        if not pillow_possible:
            return tf.ensure_shape(with_tf(path), image_shape)
        image = tf.cond(
            pillow,
            lambda: tf.numpy_function(with_pillow, [path], tf.uint8, stateful=False),
            lambda: with_tf(path),
        )
        return tf.ensure_shape(image, image_shape)

    scalar = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.bool)]
    return tf.function(decode, input_signature=scalar, autograph=False)


def _declared_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width x height from the header of an encoded PNG, GIF, BMP or JPEG (int64)."""
    head = tf.io.decode_raw(tf.strings.substr(data + b"\0" * 32, 0, 32), tf.uint8)
    b = tf.cast(head, tf.int64)

    def big(i: int, n: int) -> tf.Tensor:
        return sum(b[i + k] * 256 ** (n - 1 - k) for k in range(n))

    def little(i: int, n: int) -> tf.Tensor:
        return sum(b[i + k] * 256**k for k in range(n))

    def signed(value: tf.Tensor) -> tf.Tensor:  # a BMP's height is negative when top-down
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    return tf.case(
        [
            (tf.equal(b[0], 0x89), lambda: big(16, 4) * big(20, 4)),  # PNG: IHDR
            (tf.equal(b[0], ord("G")), lambda: little(6, 2) * little(8, 2)),  # GIF
            (tf.equal(b[0], ord("B")), lambda: little(18, 4) * signed(little(22, 4))),  # BMP
            (
                tf.equal(b[0], 0xFF),
                lambda: tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)),
            ),
        ],
        default=lambda: tf.constant(0, tf.int64),  # decode_image refuses anything else
    )


def _row_decoder(x: FileImages):
    """row -> that file of `x`, decoded (for a tf.data map)."""
    decode = decoder(x.image_shape, bool(x.pillow.any()))
    paths, pillow = x.tensors
    return lambda row: decode(paths[row], pillow[row])


def _batches(
    x: FileImages, rows: tf.Tensor, labels: tf.Tensor, size: int, masks: FileMasks | None = None
) -> tf.data.Dataset:
    """(rows, images, labels, weights) batches of `size` for `rows` in order.

    Read from the decode cache a batch at a time, else decoded file by file. With `masks`
    (the labels of streamed pairs), `labels` are positions in it, and each mask is read
    beside its image (from its files, or from the decode cache).
    """
    if x.store is not None:
        return _from_store(x, rows, labels, size, masks)
    return _decoded_in_place(x, rows, labels, masks).batch(size)


def label_tensor(y: Any) -> tf.Tensor:
    """Labels to gather by row: the labels, or for masks still in files their positions."""
    return tf.range(len(y), dtype=tf.int64) if isinstance(y, FileMasks) else tf.constant(y)


def _mask_reader(masks: FileMasks):
    """position -> that mask, read and checked again (for a tf.data map; fails like a
    damaged image when the file no longer reads)."""

    def read(position: np.int64) -> np.ndarray:
        return masks.one(int(position))

    def mask(position: tf.Tensor) -> tf.Tensor:
        found = tf.numpy_function(read, [position], tf.as_dtype(masks.dtype), stateful=False)
        return tf.ensure_shape(found, masks.size)

    return mask


def _decoded_in_place(
    x: FileImages, rows: tf.Tensor, labels: tf.Tensor, masks: FileMasks | None = None
) -> tf.data.Dataset:
    """(row, image, label, weight) for `rows` in order; a failed decode: a blank of weight 0."""
    shape, n = x.image_shape, tf.shape(rows, out_type=tf.int64)[0]
    decode = _row_decoder(x)
    if masks is None:
        label_of, label_shape, label_dtype = (
            (lambda label: label),
            tf.shape(labels)[1:],
            labels.dtype,
        )
    else:  # a mask read beside its image: either failing leaves the pair out
        label_of, label_shape = _mask_reader(masks), tf.constant(masks.size, tf.int64)
        label_dtype = tf.as_dtype(masks.dtype)
    items = (
        tf.data.Dataset.from_tensor_slices((tf.range(n), rows, labels))
        .map(
            lambda pos, row, label: (pos, row, decode(row), label_of(label)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
    )
    end = tf.data.Dataset.from_tensors(
        # a label of the labels' own shape: a class index, a multi-hot row, numbers, a mask
        (
            n,
            tf.constant(-1, tf.int64),
            tf.zeros(shape, tf.uint8),
            tf.zeros(label_shape, label_dtype),
        )
    )

    def fill(expected, item):  # blanks for the positions a failed decode left empty
        pos, row, image, label = item
        gap = tf.range(expected, pos)
        count = tf.shape(gap, out_type=tf.int64)
        blanks = tf.zeros(tf.concat([count, shape], 0), tf.uint8)
        if masks is None:
            gap_labels = tf.gather(labels, gap)
        else:
            gap_labels = tf.zeros(tf.concat([count, label_shape], 0), label_dtype)
        return pos + 1, (
            tf.concat([tf.gather(rows, gap), [row]], 0),
            tf.concat([blanks, image[None]], 0),
            tf.concat([gap_labels, [label]], 0),
            tf.concat([tf.zeros(tf.shape(gap), tf.float32), [1.0]], 0),
        )

    return (
        items.concatenate(end)
        .scan(tf.constant(0, tf.int64), fill)
        .unbatch()
        .filter(lambda row, image, label, weight: row >= 0)
    )


def _from_store(
    x: FileImages, rows: tf.Tensor, labels: tf.Tensor, size: int, masks: FileMasks | None = None
) -> tf.data.Dataset:
    """The same batches copied out of a decode cache: no decoding.

    The cache may be shared, so it can be cut short while this process reads it: a memory
    map would then die of SIGBUS (a size check before the read races with the cut), so each
    row is read with `os.pread` into the batch. A row that is no longer there stays blank,
    with weight 0, and is reported like a failed decode. Masks (`masks`) are read beside their
    images, from their own decode cache.
    """
    stream, offset = x.mapped()
    row_bytes = int(np.prod(x.image_shape))

    def read(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = x.rows[batch]
        images = np.zeros((len(rows), *x.image_shape), np.uint8)
        flat = images.reshape(len(rows), row_bytes)
        there = np.zeros(len(rows), np.float32)
        for i, row in enumerate(rows.tolist()):
            try:
                data = os.pread(stream.fileno(), row_bytes, offset + row * row_bytes)
            except OSError:
                continue
            if len(data) == row_bytes:
                flat[i] = np.frombuffer(data, np.uint8)
                there[i] = 1.0
        return images, there

    def read_pairs(batch: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        images, there = read(batch)
        found, failed = masks.read(positions)
        there[failed] = 0.0
        images[failed] = 0
        return images, found, there

    def load(rows_batch, labels_batch):
        if masks is None:
            images, weights = tf.numpy_function(
                read, [rows_batch], (tf.uint8, tf.float32), stateful=False
            )
        else:
            images, labels_batch, weights = tf.numpy_function(
                read_pairs,
                [rows_batch, labels_batch],
                (tf.uint8, tf.as_dtype(masks.dtype), tf.float32),
                stateful=False,
            )
            labels_batch = tf.ensure_shape(labels_batch, (None, *masks.size))
        images = tf.ensure_shape(images, (None, *x.image_shape))
        return rows_batch, images, labels_batch, tf.ensure_shape(weights, (None,))

    return (
        tf.data.Dataset.from_tensor_slices((rows, labels))
        .batch(size)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )


def _mapped(path: Path, image_shape: tuple[int, ...]) -> tuple[Any, int]:
    """The open decode cache and where its pixels start (the header checked again)."""
    stream = open_regular(path, DataError)
    try:
        (files, *shape), dtype = npy_header(stream)
        if dtype != np.uint8 or tuple(shape) != tuple(image_shape):
            raise ValueError(f"{shape} {dtype}")
        return stream, stream.tell()
    except ValueError:  # a bad header, or a file shorter than it says
        stream.close()
        raise DataError(
            f"{path}: the decode cache changed while in use",
            f"delete it (rm -r {path.parent}) and run again: it is rebuilt",
        ) from None


def decode_all(
    x: FileImages, batch: int = EVAL_BATCH, sink: Any = None
) -> tuple[np.ndarray, list[int]]:
    """Every image of `x` in order, and the positions that failed; with `sink`, batches go there."""
    out = np.empty(x.shape, np.uint8) if sink is None else np.empty((0, *x.image_shape), np.uint8)
    failed: list[int] = []
    positions = tf.range(len(x), dtype=tf.int64)
    start = 0
    items = _batches(x, positions, tf.zeros(len(x), tf.int64), batch).prefetch(2)
    for _, images, _, weights in items.as_numpy_iterator():
        if sink is None:
            out[start : start + len(images)] = images
        else:
            sink(images)
        failed += (start + np.flatnonzero(weights == 0)).tolist()
        start += len(images)
    return out, failed


# --------------------------------------------------------------------------- batches


def worker_share(order: tf.Tensor, batch_size: int, workers: int, index: int) -> tf.Tensor:
    """This worker's part of each global batch of `order`: contiguous, in order."""
    if workers == 1:
        return order
    n = tf.shape(order, out_type=tf.int64)[0]
    j, size = tf.range(n), tf.constant(batch_size, tf.int64)  # int64: traced, no int32 mix
    offset, length = j % size, tf.minimum(size, n - (j // size) * size)
    mine = (offset >= length * index // workers) & (offset < length * (index + 1) // workers)
    return tf.boolean_mask(order, mine)


def _finish(x: FileImages, key: Any, num_classes: int, one_hot: bool):
    def record(key_value, rows, weights) -> np.ndarray:
        bad = rows[weights == 0]
        if len(bad):
            name = key_value.decode() if isinstance(key_value, bytes) else int(key_value)
            x.skips.setdefault(name, set()).update(int(r) for r in bad)
        return np.int64(len(bad))

    def finish(rows, images, labels, weights):
        if key is not None:
            count = tf.numpy_function(record, [key, rows, weights], tf.int64, stateful=True)
            with tf.control_dependencies([count]):
                images = tf.identity(images)
        images = tf.cast(images, tf.float32)
        return images, (tf.one_hot(labels, num_classes) if one_hot else labels), weights

    return finish


def training_batches(
    x: FileImages,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    num_classes: int,
    one_hot: bool,
    first_epoch: int,
    epochs: int,
) -> tuple[tf.data.Dataset, int]:
    """Streamed batches for epochs `first_epoch`..`epochs - 1`, in the in-memory route's order."""
    n = len(x)
    workers, index = worker_of()
    local = batch_size * (index + 1) // workers - batch_size * index // workers
    labels, masks = label_tensor(y), y if isinstance(y, FileMasks) else None

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        rows = worker_share(shuffled(n, seed, epoch), batch_size, workers, index)
        return _batches(x, rows, tf.gather(labels, rows), local, masks).map(
            _finish(x, epoch, num_classes, one_hot)
        )

    steps = math.ceil(n / batch_size)
    batches = (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_batches)
        .apply(tf.data.experimental.assert_cardinality(steps * max(epochs - first_epoch, 0)))
        .prefetch(AHEAD)
    )
    if workers > 1:  # each worker already reads only its share of the files
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        batches = batches.with_options(options)
    return batches, steps


def eval_batches(
    x: FileImages, y: np.ndarray, *, batch_size: int, num_classes: int, one_hot: bool
) -> tf.data.Dataset:
    """Batches in order (images, labels, weights), for validation, evaluation and prediction."""
    rows = tf.range(len(x), dtype=tf.int64)
    return (
        _batches(x, rows, label_tensor(y), batch_size, y if isinstance(y, FileMasks) else None)
        .map(_finish(x, "eval", num_classes, one_hot))
        .apply(tf.data.experimental.assert_cardinality(math.ceil(len(x) / batch_size)))
        .prefetch(AHEAD)
    )


def decode_batches(x: FileImages, batch_size: int):
    """(positions, float32 images) batches in order, for prediction.

    A file that fails to decode is left out (its position is missing), which spares
    prediction the per-image bookkeeping that keeps training's batches whole.
    """
    decode = _row_decoder(x)
    return (
        tf.data.Dataset.range(len(x))
        .map(
            lambda i: (i, decode(i)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
        .batch(batch_size)
        .map(lambda positions, images: (positions, tf.cast(images, tf.float32)))
        .prefetch(AHEAD)
        .as_numpy_iterator()
    )


def files_for(paths: list[Path], image_shape: tuple[int, int, int]) -> FileImages:
    """Files to predict on, routed by suffix (no header check: a failure retries with Pillow)."""
    pillow = [p.suffix.lower() not in TF_SUFFIXES for p in paths]
    return FileImages(
        np.asarray([str(p) for p in paths], dtype=object), np.asarray(pillow), image_shape
    )


# --------------------------------------------------------------------------- reporting


def skip_reporter(dataset: Any, run: Any, display: Any, write: bool) -> list[Any]:
    """A callback reporting files that failed to decode, where the images are streamed; the
    files refused before training go to skipped.csv at once, on every route.

    Training's after each epoch, validation's after each pass, and the test split's after
    the final test (given to that `evaluate` too): on the display and in skipped.csv.
    """
    rows: list[dict[str, Any]] = [
        {"epoch": "", "split": "", "path": p, "reason": r} for p, r in dataset.skipped
    ]

    def save() -> None:
        if write:
            from cnnctl.runs import rows_to_csv, write_text

            write_text(run.path / "skipped.csv", rows_to_csv(rows))

    if rows:  # what was refused before training, whatever the route: listed now
        save()
    if not isinstance(dataset.x_train, FileImages):
        return []
    import keras

    class SkipReport(keras.callbacks.Callback):
        epoch: int | None = None  # the epoch being trained; None once fit is over

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_end(self, logs: Any = None) -> None:
            self.epoch = None

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            failed = dataset.x_train.skips.pop(epoch, set())
            self._report("training", dataset.x_train, dataset.y_train, failed)

        def on_test_end(self, logs: Any = None) -> None:
            split, x, y = (
                ("validation", dataset.x_val, dataset.y_val)
                if self.epoch is not None
                else ("test", dataset.x_test, dataset.y_test)
            )
            self._report(split, x, y, eval_skipped(x))

        def _report(self, split: str, x: FileImages, y: Any, failed: Collection[int]) -> None:
            if not failed:
                return
            when = "" if self.epoch is None else self.epoch + 1
            reasons = failures(x, sorted(failed), y)
            rows.extend({"epoch": when, "split": split, "path": p, "reason": r} for p, r in reasons)
            save()
            if display is not None:
                from cnnctl.errors import _one_line

                path, reason = reasons[0]
                display.warn(
                    f"{f'epoch {when}: ' if when else ''}skipped {len(failed)} {split} images "
                    f"that could not be decoded (first: {_one_line(path)}: {reason}); "
                    f"all listed in {run.path / 'skipped.csv'}"
                )

    return [SkipReport()]


def eval_skipped(x: Any) -> list[int]:
    """Positions of `x` that failed to decode when it was last scored (blank, weight 0)."""
    return sorted(x.skips.pop("eval", set())) if isinstance(x, FileImages) else []


def failures(x: FileImages, positions: list[int], y: Any = None) -> list[tuple[str, str]]:
    """(path, reason) of each position of `x` that failed to decode: its mask's, where `y`
    are masks in files and that one no longer reads, else its image's."""
    found = []
    for r in positions:
        why = y.reason(r) if isinstance(y, FileMasks) else None
        found.append((str(y.paths[r]), why) if why else (str(x.paths[r]), x.reason(r)))
    return found
