"""Semantic segmentation: a class for every pixel. Labels are masks (H, W) of class indices,
with `data.ignore_index` (default 255) on pixels left out of loss and metrics; the model gives
(H, W, classes) probabilities, the image's own height and width.

Scores come from the pixel confusion matrix (true class x predicted class, ignored pixels left
out): IoU and Dice per class, mean IoU (the headline, over the classes present in the truth or
the prediction, as Keras' MeanIoU), frequency-weighted IoU and pixel accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cnnctl import report as figures
from cnnctl.errors import ConfigError, DataError
from cnnctl.escape import safe
from cnnctl.runs.results import EvaluationResult, Guess, Prediction
from cnnctl.suggest import suggest
from cnnctl.tasks.base import ExplainTarget, Report, Task

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig

MAX_DROP_POINTS = 1.0  # a quantized file may lose at most this much mean IoU (points)
# A float file's largest difference is taken over every pixel and class (45 million values for
# 1,000 64x64 images of 11 classes, 4,096 times a classifier's): allowed 10x the per-image bound.
PIXEL_TOLERANCE = 10.0
GALLERY = 8  # worst images drawn
PART = 1024  # masks counted at a time
DICE_WEIGHTS = {"dice": (0.0, 1.0), "crossentropy_dice": (1.0, 1.0)}  # (crossentropy, dice)


class Segmentation(Task):
    name = "segmentation"
    spatial_output = True
    mask_labels = True
    counted = "pixels"
    needs_test_outputs = True
    headline = ("mean_iou", "max")
    prediction_columns = ("class", "share")

    def __init__(self) -> None:
        self.ignore = 255

    def use_config(self, config: Config) -> None:
        self.ignore = config.data.ignore_index

    # --------------------------------------------------------------------------- labels

    def check_source(self, kind: str, where: str) -> None:
        if kind != "mask_folder":
            kind = kind.replace("_", " ")
            raise ConfigError(
                f"{where}: task: segmentation reads a folder with images/ and masks/, not a {kind}",
                "set data.path to a folder holding images/ and masks/ (the same file names; "
                "optional train/ and test/ below each)",
            )

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if not isinstance(y, np.ndarray) and y.ndim == 3:  # masks in files, checked when read
            return y
        if y.ndim != 3 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise DataError(
                f"{origin}: segmentation labels must be masks of class indices shaped "
                f"(N, height, width); got {y.dtype} shaped {y.shape}",
                "task: segmentation reads a folder with images/ and masks/",
            )
        return y.astype(np.int32)

    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        seen = max(_top(y, self.ignore) for y in labels) + 1
        if given is None:
            return tuple(str(i) for i in range(seen))
        if len(given) < seen:
            raise DataError(f"{origin}: {len(given)} class names for mask values up to {seen - 1}")
        return tuple(given)

    def label_counts(self, y: np.ndarray, k: int) -> list[int]:
        """Pixels of each class (ignored ones left out); masks in files read a part at a time."""
        counts = np.zeros(k, dtype=np.int64)
        for start in range(0, len(y), PART):
            part = np.asarray(y[start : start + PART])
            counts += np.bincount(part[(part != self.ignore) & (part < k)].ravel(), minlength=k)
        return counts.tolist()

    def check_outputs(self, outputs: int, names: Sequence[str], y: np.ndarray, where: str) -> None:
        if outputs != len(names):
            raise DataError(
                f"{where}: the model gives {outputs} classes per pixel but the data has "
                f"{len(names)} classes"
            )

    # --------------------------------------------------------------------------- the model

    def check_head(self, output_shape: tuple, outputs: int | None, config: Config) -> None:
        """(H, W, classes) at the input's height and width, softmax where the config says."""
        last = ("model", "layers", len(config.model.layers) - 1)
        height, width = config.model.input_shape[:2]
        if len(output_shape) != 4 or tuple(output_shape[1:3]) != (height, width):
            raise ConfigError(
                f"{config.where(last)}: the network ends with shape {output_shape}, not "
                f"{height}x{width} pixels of class scores",
                "end with {type: Conv2D, filters: <classes>, kernel_size: 1, activation: softmax} "
                "and upsample as often as you pool (a Skip block keeps the size)",
            )
        if outputs is not None and output_shape[-1] != outputs:
            raise ConfigError(
                f"{config.where(last)}: the last layer gives {output_shape[-1]} classes per pixel "
                f"but the data has {outputs} classes",
                f"set filters: {outputs} on the last Conv2D layer",
            )
        spec = config.model.layers[-1]
        if spec.type in ("Conv2D", "Conv2DTranspose", "Activation", "Dense"):
            found = spec.args.get("activation")
            if found != "softmax":
                raise ConfigError(
                    f"{config.where(last)}: the last layer's activation is {found or 'none'}; "
                    "task: segmentation needs softmax (a probability per class and pixel)",
                    "set activation: softmax",
                )

    def one_hot(self, train: TrainConfig) -> bool:
        return False

    def class_weights(self, config: Config, y: np.ndarray, names: Sequence[str]) -> Any:
        self.pixel_weights(config, y, names)  # checked before the run folder exists
        return None  # Keras' class_weight reads masks as one-hot rows: weights go per pixel

    def pixel_weights(
        self, config: Config, y: np.ndarray, names: Sequence[str]
    ) -> np.ndarray | None:
        """train.class_weight as a weight per class: `balanced` from the training pixels'
        counts (n / (classes * count)), or {name: weight} (the others 1). Cross-entropy only:
        Dice already weighs every class alike."""
        wanted = config.train.class_weight
        if wanted is None:
            return None
        _check_weighted_loss(config)
        if wanted == "balanced":
            counts = np.asarray(self.label_counts(y, len(names)), dtype=np.float64)
            total = counts.sum()
            safe = np.where(counts > 0, counts, 1.0)
            return np.where(counts > 0, total / (len(names) * safe), 1.0).astype(np.float32)
        weights = np.ones(len(names), dtype=np.float32)
        for name, weight in wanted.items():
            at = config.where(("train", "class_weight", name), at_key=True)
            if name not in names:
                raise ConfigError(
                    f"{at}: no class named '{name}' in the data{suggest(name, list(names))}",
                    f"classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}",
                )
            if not weight > 0 or not np.isfinite(weight):
                raise ConfigError(f"{at}: a class weight must be above 0, got {weight}")
            weights[list(names).index(name)] = float(weight)
        return weights

    def loss_object(self, config: Config, outputs: int) -> Any:
        import keras

        _check_weighted_loss(config)  # here too: `validate` compiles, and reads no masks
        loss = config.train.loss
        if loss in DICE_WEIGHTS:
            from cnnctl.tasks.pixel_loss import PixelLoss

            crossentropy, dice = DICE_WEIGHTS[loss]
            return PixelLoss(outputs, self.ignore, crossentropy, dice, name=loss)
        return keras.losses.SparseCategoricalCrossentropy(ignore_class=self.ignore)

    def metric_object(self, name: str, config: Config, outputs: int) -> Any:
        if name != "mean_iou":
            return None
        import keras

        return keras.metrics.MeanIoU(
            outputs, name="mean_iou", ignore_class=self.ignore, sparse_y_pred=False
        )

    def metric_hint(self) -> str:
        return "for segmentation use mean_iou (or accuracy, which counts ignored pixels)"

    # --------------------------------------------------------------------------- scoring

    def confusion(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Pixel counts: rows true classes, columns predicted ones; ignored pixels left out."""
        k, truth = outputs.shape[-1], np.asarray(truth)
        predicted = outputs.argmax(axis=-1) if outputs.ndim == truth.ndim + 1 else outputs
        keep = (truth != self.ignore) & (truth >= 0) & (truth < k)
        pairs = truth[keep].astype(np.int64) * k + predicted[keep]
        return np.bincount(pairs, minlength=k * k).reshape(k, k)

    def test_metrics(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        found = scores(self.confusion(outputs, truth))
        keys = ("mean_iou", "pixel_accuracy", "frequency_weighted_iou", "mean_dice")
        return {k: found[k] for k in keys}

    def score(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Cross-entropy over the pixels not ignored, and the pixel figures."""
        truth = np.asarray(truth)
        keep = truth != self.ignore
        if keep.any():
            picked = np.take_along_axis(
                outputs, np.where(keep, truth, 0)[..., None].astype(np.int64), axis=-1
            )[..., 0]
            loss = float(-np.log(np.clip(picked[keep], 1e-7, 1.0)).mean())
        else:
            loss = 0.0
        return {"loss": loss, **self.test_metrics(outputs, truth)}

    def report(
        self,
        outputs: np.ndarray,
        truth: np.ndarray,
        names: list[str],
        files: Sequence[str] | None,
        images: np.ndarray,
    ) -> Report:
        truth = np.asarray(truth)
        matrix = self.confusion(outputs, truth)
        found = scores(matrix)
        per_class = {
            name: {
                "iou": round(float(found["iou"][i]), 4),
                "dice": round(float(found["dice"][i]), 4),
                "precision": round(float(found["precision"][i]), 4),
                "recall": round(float(found["recall"][i]), 4),
                "pixels": int(matrix[i].sum()),
                "predicted_pixels": int(matrix[:, i].sum()),
            }
            for i, name in enumerate(names)
        }
        fields = {
            "per_class": per_class,
            **{k: found[k] for k in ("mean_iou", "pixel_accuracy", "frequency_weighted_iou")},
            "mean_dice": found["mean_dice"],
            "ignore_index": self.ignore,
            "ignored_pixels": int((truth == self.ignore).sum()),
            "confusion_matrix": matrix.tolist(),
            "class_names": names,
        }
        worst = self._worst(outputs, truth, files)
        shown: dict[str, Any] = {
            "confusion_matrix": lambda path: figures.save_confusion(matrix, names, path)
        }
        if worst and len(images) == len(truth):
            rows = worst[:GALLERY]
            predicted = {row["index"]: outputs[row["index"]].argmax(-1) for row in rows}
            shown["worst"] = lambda path: figures.save_mask_gallery(
                images, truth, predicted, rows, names, path
            )
        return Report(fields, worst, shown)

    def _worst(
        self, outputs: np.ndarray, truth: np.ndarray, files: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """Every image with a wrong pixel, lowest mean IoU first."""
        rows = []
        for index in range(len(truth)):
            matrix = self.confusion(outputs[index], truth[index])
            wrong = int(matrix.sum() - np.trace(matrix))
            if wrong:
                rows.append(
                    {
                        "index": index,
                        **({"path": files[index]} if files else {}),
                        "mean_iou": round(scores(matrix)["mean_iou"], 6),
                        "wrong_pixels": wrong,
                        "pixels": int(matrix.sum()),
                    }
                )
        return sorted(rows, key=lambda row: (row["mean_iou"], -row["wrong_pixels"]))

    def evaluation_table(self, result: EvaluationResult) -> Group:
        details = result.details
        table = Table(show_edge=False)
        table.add_column("class", overflow="ellipsis", max_width=20, no_wrap=True)
        for column in ("IoU", "Dice", "precision", "recall", "pixels"):
            table.add_column(column, justify="right")
        for name, row in details["per_class"].items():
            table.add_row(
                safe(name),
                *(f"{row[k]:.3f}" for k in ("iou", "dice", "precision", "recall")),
                f"{row['pixels']:,}",
            )
        footer = Text(
            f"mean IoU {details['mean_iou']:.4f}  pixel accuracy {details['pixel_accuracy']:.4f}"
            f"  frequency-weighted IoU {details['frequency_weighted_iou']:.4f}  "
            f"mean Dice {details['mean_dice']:.4f}  ({details['ignored_pixels']:,} pixels of "
            f"ignore_index {details['ignore_index']} left out)"
        )
        header, saved = figures.evaluation_lines(result)
        return Group(header, table, footer, saved)

    def explain_targets(
        self, output: np.ndarray, names: list[str], chosen: int | None, k: int | None
    ) -> list[ExplainTarget]:
        """A class's predicted pixels: the explained score is the sum of that class's
        probability over the pixels predicted as it. Default: the class covering most pixels
        after class 0 (the background, by convention), or the k largest with --top-k."""
        mask = output.argmax(axis=-1)
        shares = np.bincount(mask.ravel(), minlength=len(names))
        if chosen is not None:
            picked = [chosen]
        else:
            order = [int(c) for c in np.argsort(shares)[::-1] if shares[c] > 0]
            foreground = [c for c in order if c != 0] or order
            picked = foreground[:1] if k is None else order[:k]
        targets = []
        for index in picked:
            pixels = mask == index if shares[index] else np.ones(mask.shape, bool)
            weights = np.zeros(output.shape, np.float32)
            weights[..., index] = pixels
            value = float(output[..., index][pixels].mean())
            targets.append(ExplainTarget(int(index), names[index], value, weights))
        return targets

    def prediction(
        self, path: Path | str, output: np.ndarray, names: list[str], k: int | None
    ) -> Prediction:
        """Each class's share of the image's pixels, largest first (every class present); the
        mask of class indices rides along for the files predict writes."""
        mask = output.argmax(axis=-1).astype(np.uint16 if len(names) > 256 else np.uint8)
        shares = np.bincount(mask.ravel(), minlength=len(names)) / max(mask.size, 1)
        order = [i for i in np.argsort(-shares, kind="stable") if shares[i] > 0]
        top = [Guess(names[i], int(i), round(float(shares[i]), 6)) for i in order]
        return Prediction(str(path), top, mask=mask)

    def parity(
        self, expected: np.ndarray, got: np.ndarray, truth: np.ndarray, tolerance: float | None
    ) -> dict[str, Any]:
        """Per pixel: the largest difference of a probability and the share of pixels whose
        class agrees. A float file must agree on every pixel whose top two Keras probabilities
        are further apart than twice the tolerance; a quantized one must keep mean IoU."""
        keras_iou = scores(self.confusion(expected, truth))["mean_iou"]
        export_iou = scores(self.confusion(got, truth))["mean_iou"]
        same = expected.argmax(-1) == got.argmax(-1) if got.size else np.ones((0,), bool)
        check = {
            "images": int(len(truth)),
            "pixels": int(same.size),
            "max_abs_diff": float(np.abs(expected - got).max()) if got.size else 0.0,
            "pixel_agreement": float(same.mean()) if same.size else 1.0,
            "keras_mean_iou": round(keras_iou, 6),
            "export_mean_iou": round(export_iou, 6),
            "mean_iou_drop_points": round(100 * (keras_iou - export_iou), 3),
        }
        if tolerance is None:
            check["max_drop_points"] = MAX_DROP_POINTS
            check["passed"] = check["mean_iou_drop_points"] <= MAX_DROP_POINTS
        else:
            tolerance *= PIXEL_TOLERANCE
            top2 = np.sort(expected, axis=-1)[..., -2:] if expected.size else expected
            clear = (top2[..., 1] - top2[..., 0]) > 2 * tolerance if expected.size else same
            check["max_abs_diff_allowed"] = tolerance
            check["passed"] = check["max_abs_diff"] <= tolerance and bool(same[clear].all())
        return check

    def parity_rows(self, check: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            ("max abs diff", f"{check['max_abs_diff']:.2e} (per pixel and class)"),
            ("pixel agreement", f"{100 * check['pixel_agreement']:.4f}%"),
            (
                "mean IoU",
                f"{100 * check['keras_mean_iou']:.2f}% (Keras) -> "
                f"{100 * check['export_mean_iou']:.2f}% "
                f"(drop {check['mean_iou_drop_points']:.2f} points)",
            ),
        ]

    def parity_summary(self, check: dict[str, Any]) -> str:
        return (
            f"max abs diff {check['max_abs_diff']:.2e}, "
            f"pixel agreement {100 * check['pixel_agreement']:.4f}%, "
            f"mean IoU {100 * check['keras_mean_iou']:.2f}% -> "
            f"{100 * check['export_mean_iou']:.2f}% on {check['images']:,} test images"
        )


def scores(matrix: np.ndarray) -> dict[str, Any]:
    """IoU, Dice, precision and recall per class from a pixel confusion matrix, and the means.

    Mean IoU and mean Dice average the classes present in the truth or the prediction (a class
    absent from both has no IoU), as Keras' MeanIoU does.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    true, guessed = matrix.sum(axis=1), matrix.sum(axis=0)
    union = true + guessed - hits
    present = union > 0
    iou = _ratio(hits, union)
    dice = _ratio(2 * hits, true + guessed)
    total = matrix.sum()
    return {
        "iou": iou,
        "dice": dice,
        "precision": _ratio(hits, guessed),
        "recall": _ratio(hits, true),
        "mean_iou": round(float(iou[present].mean()) if present.any() else 0.0, 6),
        "mean_dice": round(float(dice[present].mean()) if present.any() else 0.0, 6),
        "pixel_accuracy": round(float(hits.sum() / total) if total else 0.0, 6),
        "frequency_weighted_iou": round(float((true / total) @ iou) if total else 0.0, 6),
    }


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros_like(top, dtype=float), where=bottom > 0)


def _top(y: Any, ignore: int) -> int:
    """The largest class value of masks `y`: masks in files say (each was checked against the
    class names), arrays are searched."""
    if not isinstance(y, np.ndarray) and hasattr(y, "top"):
        return int(y.top)
    return int(y[y != ignore].max(initial=0))


def _check_weighted_loss(config: Config) -> None:
    """train.class_weight goes with cross-entropy only: Dice already weighs every class alike."""
    loss = config.train.loss
    if config.train.class_weight is not None and loss != "sparse_categorical_crossentropy":
        raise ConfigError(
            f"{config.where(('train', 'class_weight'))}: class weights apply to loss: "
            f"sparse_categorical_crossentropy, not {loss}",
            "remove train.class_weight: Dice already weighs every class alike",
        )
