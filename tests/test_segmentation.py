"""task: segmentation: Skip blocks (U-Nets) from YAML, masks read and vetted pair by pair, IoU
and Dice with ignore_index, and the full path on small real scenes (real Keras): train ->
evaluate -> predict (mask files against the model's argmax) -> export -> predict with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.errors import ConfigError
from cnnctl.tasks.segmentation import Segmentation, scores

UNET = """\
name: {name}
task: segmentation
data:
  path: {path}
  validation: 0.2
model:
  input_shape: [64, 64, 1]
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}}
    - type: Skip
      layers:
        - MaxPooling2D
        - {{type: Conv2D, filters: 16, kernel_size: 3, padding: same, activation: relu}}
        - type: Skip
          layers:
            - MaxPooling2D
            - {{type: Conv2D, filters: 16, kernel_size: 3, padding: same, activation: relu}}
            - {{type: UpSampling2D, size: 2}}
        - {{type: Conv2DTranspose, filters: 16, kernel_size: 2, strides: 2, padding: same}}
    - {{type: Conv2D, filters: {classes}, kernel_size: 1, activation: softmax}}
train:
  epochs: {epochs}
  batch_size: 32
  optimizer: {{type: Adam, learning_rate: 0.003}}
  loss: {loss}
"""


def _unet(
    path: Path, name: str = "seg", classes: int = 11, epochs: int = 2, loss="crossentropy_dice"
):
    return UNET.format(name=name, path=path, classes=classes, epochs=epochs, loss=loss)


# --------------------------------------------------------------------------- metrics


def test_iou_and_dice_on_a_hand_computed_4x4_mask_leave_ignored_pixels_out():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
    guess = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 2, 0], [2, 2, 1, 1]])
    outputs = np.eye(3, dtype=np.float32)[guess][None]  # one-hot "probabilities"
    task = Segmentation()
    matrix = task.confusion(outputs, truth[None])
    # 12 pixels counted (4 ignored): class 0 has 4, predicted 0 on 3 of them (and on one 2)
    assert matrix.tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    found = scores(matrix)
    # IoU: 0 -> 3/(4+4-3) = 0.6; 1 -> 4/(4+5-4) = 0.8; 2 -> 3/(4+3-3) = 0.75
    assert np.allclose(found["iou"], [0.6, 0.8, 0.75])
    assert found["mean_iou"] == pytest.approx((0.6 + 0.8 + 0.75) / 3, abs=1e-6)
    assert np.allclose(found["dice"], [6 / 8, 8 / 9, 6 / 7])
    assert found["pixel_accuracy"] == pytest.approx(10 / 12, abs=1e-6)
    assert found["frequency_weighted_iou"] == pytest.approx(
        (4 * 0.6 + 4 * 0.8 + 4 * 0.75) / 12, abs=1e-6
    )
    # the ignored pixels' predictions change nothing
    other = guess.copy()
    other[2:, 2:] = 0
    assert task.confusion(np.eye(3)[other][None], truth[None]).tolist() == matrix.tolist()


def test_keras_mean_iou_and_the_loss_leave_ignored_pixels_out_as_numpy_does():
    import keras

    from cnnctl.tasks.pixel_loss import PixelLoss

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (2, 4, 4))
    truth[:, 0, :] = 255
    outputs = rng.dirichlet(np.ones(3), size=(2, 4, 4)).astype(np.float32)
    metric = keras.metrics.MeanIoU(3, ignore_class=255, sparse_y_pred=False)
    metric.update_state(truth, outputs)
    assert float(metric.result()) == pytest.approx(
        scores(Segmentation().confusion(outputs, truth))["mean_iou"], abs=1e-5
    )
    ce = float(PixelLoss(3, 255, 1.0, 0.0)(truth, outputs))
    keep = truth != 255
    picked = np.take_along_axis(outputs, np.where(keep, truth, 0)[..., None], -1)[..., 0]
    per_image = [-np.log(picked[i][keep[i]]).mean() for i in range(2)]
    assert ce == pytest.approx(np.mean(per_image), rel=1e-4)
    changed = outputs.copy()
    changed[:, 0] = outputs[:, 0, ::-1]  # other probabilities on the ignored row only
    for dice, crossentropy in ((1.0, 0.0), (1.0, 1.0)):
        loss = PixelLoss(3, 255, crossentropy, dice)
        assert float(loss(truth, outputs)) == pytest.approx(float(loss(truth, changed)), rel=1e-5)
    perfect = np.eye(3, dtype=np.float32)[np.where(keep, truth, 0)]
    assert float(PixelLoss(3, 255, 0.0, 1.0)(truth, perfect)) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- Skip blocks


ISSUE_UNET = """\
name: unet
task: segmentation
data: {path: cells}
model:
  input_shape: [128, 128, 3]
  layers:
    - {type: Conv2D, filters: 16, kernel_size: 3, padding: same, activation: relu}
    - type: Skip
      layers:
        - MaxPooling2D
        - {type: Conv2D, filters: 32, kernel_size: 3, padding: same, activation: relu}
        - type: Skip
          layers:
            - MaxPooling2D
            - {type: Conv2D, filters: 64, kernel_size: 3, padding: same, activation: relu}
            - {type: UpSampling2D, size: 2}
        - {type: Conv2D, filters: 32, kernel_size: 3, padding: same, activation: relu}
        - {type: UpSampling2D, size: 2}
    - {type: Conv2D, filters: 3, kernel_size: 1, activation: softmax}
"""


def test_the_issues_unet_builds_as_one_sequential_of_layers_and_blocks(write):
    from cnnctl.model.builder import build_model

    model = build_model(load_config(write("unet.yaml", ISSUE_UNET)), 3)
    assert model.output_shape == (None, 128, 128, 3)
    skip = model.layers[2]
    assert skip.name == "skip_1" and skip.output_shape == (None, 128, 128, 16 + 32)
    inner = [layer.name for layer in skip.layers]
    assert "skip_1_concat" in inner and any(name.startswith("skip_") for name in inner[1:-1])


def test_a_skip_path_that_changes_the_size_is_named_at_its_line_with_both_shapes(write):
    from cnnctl.model.builder import build_model

    text = ISSUE_UNET.replace("        - {type: UpSampling2D, size: 2}\n", "")
    with pytest.raises(
        ConfigError,
        match=r"unet.yaml:12:11: model.layers\[1\].layers\[2\]: .*shape \(64, 64, 32\) into "
        r"\(32, 32, 32\); its path must keep height and width",
    ):
        build_model(load_config(write("unet.yaml", text)), 3)
    text = ISSUE_UNET.replace("\n        - {type: UpSampling2D, size: 2}\n", "\n")  # the outer one
    with pytest.raises(
        ConfigError,
        match=r"unet2.yaml:8:7: model.layers\[1\]: .*\(128, 128, 16\) into \(64, 64, 32\)",
    ):
        build_model(load_config(write("unet2.yaml", text)), 3)


def test_merge_add_needs_the_channels_kept_and_merge_is_checked(write):
    from cnnctl.model.builder import build_model

    text = ISSUE_UNET.replace(
        "    - type: Skip\n      layers:", "    - type: Skip\n      merge: add\n      layers:", 1
    )
    with pytest.raises(ConfigError, match=r"unet.yaml:9:14: model.layers\[1\].merge: merge: add"):
        build_model(load_config(write("unet.yaml", text)), 3)
    text = text.replace("merge: add", "merge: sum")
    with pytest.raises(ConfigError, match=r"unknown value 'sum'"):
        build_model(load_config(write("unet.yaml", text)), 3)


def test_a_head_that_is_not_per_pixel_softmax_is_named_at_the_last_layer(write):
    from cnnctl.model.builder import build_model

    config = load_config(write("unet.yaml", ISSUE_UNET.replace("softmax", "sigmoid")))
    with pytest.raises(ConfigError, match=r"model.layers\[2\]: .*activation is sigmoid"):
        build_model(config, 3)
    with pytest.raises(ConfigError, match=r"model.layers\[2\]: the last layer gives 3 classes"):
        build_model(load_config(write("unet.yaml", ISSUE_UNET)), 5)


# --------------------------------------------------------------------------- masks


def _pair(root: Path, name: str, image: np.ndarray, mask: Image.Image | None, split="train"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / split / f"{name}.png")
    if mask is not None:
        mask.save(root / "masks" / split / f"{name}.png")


@pytest.fixture
def masks_folder(tmp_path) -> Path:
    """Good pairs in 8-bit, 16-bit and palette masks, beside one bad pair of each kind."""
    root = tmp_path / "cells"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    values = rng.integers(0, 3, (16, 16)).astype(np.uint8)
    values[0, 0] = 255
    for i in range(6):
        _pair(root, f"good{i}", image, Image.fromarray(values, "L"))
    _pair(root, "test0", image, Image.fromarray(values, "L"), split="test")
    wide = Image.fromarray(values.astype(np.uint16))
    _pair(root, "sixteen", image, wide)
    palette = Image.fromarray(values, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9))
    _pair(root, "palette", image, palette)
    bad = values.copy()
    bad[3, 5] = 7
    _pair(root, "badvalue", image, Image.fromarray(bad, "L"))
    _pair(root, "nomask", image, None)
    _pair(root, "small", image, Image.fromarray(values[:8], "L"))
    _pair(root, "rgb", image, Image.fromarray(np.stack([values] * 3, -1), "RGB"))
    Image.fromarray(values, "L").save(root / "masks" / "train" / "orphan.png")
    (root / "classes.txt").write_text("background\ncell\nnucleus\n")
    return root


def test_masks_are_read_and_every_bad_pair_is_skipped_with_its_reason(masks_folder):
    from cnnctl.config import DataConfig
    from cnnctl.data.masks import load_mask_folder

    arrays = load_mask_folder(masks_folder, (16, 16, 1), DataConfig(path=str(masks_folder)))
    assert arrays.class_names == ("background", "cell", "nucleus")
    assert arrays.x_train.shape == (8, 16, 16, 1) and arrays.y_train.shape == (8, 16, 16)
    assert arrays.x_test.shape == (1, 16, 16, 1)
    first = arrays.y_train[0]
    for row in arrays.y_train:  # 8-bit, 16-bit and palette masks give the same indices
        assert np.array_equal(row, first)
    assert first[0, 0] == 255
    reasons = {Path(path).name: reason for path, reason in arrays.skipped}
    masks = masks_folder / "masks" / "train"
    assert reasons == {
        "badvalue.png": "value 7 at x=5, y=3 is no class (0..2) and not ignore_index 255",
        "nomask.png": f"no mask (expected {masks / 'nomask'}.png)",
        "small.png": "mask is 16x8 but its image is 16x16",
        "rgb.png": "a mask must be single-channel (8 or 16 bit grey, or palette), got RGB",
        "orphan.png": "a mask without an image",
    }
    assert dict(arrays.skipped)[str(masks / "badvalue.png")]  # the mask's path, not the image's


def test_datasets_check_lists_every_skipped_pair(runner, masks_folder, write):
    config = write(
        "cells.yaml",
        ISSUE_UNET.replace("cells", str(masks_folder))
        .replace("[128, 128, 3]", "[16, 16, 1]")
        .replace("data: {path", "data: {validation: 0.25, path"),
    )
    done = runner.invoke(main, ["datasets", "check", str(config)])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "5 files skipped" in text
    for name in (
        "badvalue.png: value 7",
        "nomask.png: no mask",
        "small.png: mask is 16x8",
        "rgb.png: a mask must be",
        "orphan.png: a mask without an image",
    ):
        assert name in text, name


def test_a_folder_without_classes_and_other_sources_are_refused_with_the_fix(masks_folder, write):
    from cnnctl.data.dataset import dataset_for

    (masks_folder / "classes.txt").unlink()
    text = ISSUE_UNET.replace("cells", str(masks_folder)).replace("[128, 128, 3]", "[16, 16, 1]")
    with pytest.raises(ConfigError, match=r"data.path: .*has no classes.txt") as error:
        dataset_for(load_config(write("a.yaml", text)))
    assert "data.classes" in error.value.hint
    config = load_config(write("b.yaml", text.replace(str(masks_folder), "x.csv")))
    Path("x.csv").write_text("path,label\n")
    with pytest.raises(ConfigError, match="reads a folder with images/ and masks/, not a"):
        dataset_for(config)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes_csv) -> Path:
    """A small U-Net trained once on the small scenes; returns its runs folder."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("segmentation")
    (root / "seg.yaml").write_text(_unet(scenes_csv.parent))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_CACHE_DIR", str(root / "cache"))
        patch.setenv("CNNCTL_OFFLINE", "1")
        patch.chdir(root)
        result = CliRunner().invoke(main, ["train", "seg.yaml", "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return root / "runs"


def test_train_evaluate_predict_masks_export_and_predict_with_the_export(
    runner, trained, scenes_csv, tmp_path
):
    from cnnctl.modelfile.load import load_model

    run = trained / "seg"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mean_iou", "pixel_accuracy", "frequency_weighted_iou"} <= set(metrics["test"])
    done = runner.invoke(main, ["evaluate", "seg", "--runs-dir", str(trained)])
    assert done.exit_code == 0, done.output
    assert "mean IoU" in done.output and "ignore_index 255" in done.output
    report = json.loads((run / "evaluation.json").read_text())
    assert report["task"] == "segmentation" and len(report["per_class"]) == 11
    assert {"iou", "dice", "pixels"} <= set(report["per_class"]["bag"])
    assert np.asarray(report["confusion_matrix"]).shape == (11, 11)
    assert report["ignored_pixels"] > 0
    assert (run / "worst.png").stat().st_size > 0 and (run / "confusion_matrix.png").is_file()

    # predict: one mask per image, pixel for pixel the model's argmax, at the image's own size
    scenes = scenes_csv.parent / "images" / "test"
    images = [scenes / f"0000{i}.png" for i in range(3)]
    big = tmp_path / "big.png"
    Image.open(images[0]).resize((96, 80), Image.Resampling.NEAREST).save(big)
    out = tmp_path / "masks"
    rows = runner.invoke(
        main,
        [
            "predict",
            "--runs-dir",
            str(trained),
            "--format",
            "json",
            "--output",
            str(out),
            *map(str, images),
            str(big),
        ],
    )
    assert rows.exit_code == 0, rows.output
    shares = json.loads(rows.stdout)
    assert len(shares) == 4 and sum(t["probability"] for t in shares[0]["top"]) == pytest.approx(
        1, abs=1e-4
    )
    model = load_model(run / "model.keras", compile=False)
    pixels = np.stack([np.asarray(Image.open(p))[..., None] for p in images]).astype(np.float32)
    expected = np.asarray(model(pixels)).argmax(-1)
    for i, path in enumerate(images):
        mask = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        assert np.array_equal(mask, expected[i])
        assert Image.open(out / f"{path.stem}.overlay.png").mode == "RGB"
    assert Image.open(out / "big.mask.png").size == (96, 80)

    # export, then the exported file predicts the same masks
    exported = runner.invoke(
        main, ["export", "seg", "--runs-dir", str(trained), "--format", "onnx"]
    )
    assert exported.exit_code == 0, exported.output
    assert "pixel agreement" in exported.output
    record = json.loads((run / "export" / "export.json").read_text())
    entry = record[-1] if isinstance(record, list) else next(iter(record.values()))
    onnx = next((run / "export").glob("*.onnx"))
    out2 = tmp_path / "masks-onnx"
    again = runner.invoke(
        main, ["predict", "--model", str(onnx), "--output", str(out2), *map(str, images)]
    )
    assert again.exit_code == 0, again.output
    for path in images:
        a = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        b = np.asarray(Image.open(out2 / f"{path.stem}.mask.png"))
        assert (a == b).mean() > 0.999
    scored = runner.invoke(main, ["evaluate", "--model", str(onnx), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["mean_iou"] == pytest.approx(report["mean_iou"], abs=1e-3)
    assert entry


def test_a_bad_config_is_refused_before_any_run_folder(runner, scenes_csv, write):
    config = write("seg.yaml", _unet(scenes_csv.parent, classes=4))
    done = runner.invoke(main, ["train", str(config)])
    assert done.exit_code == 2
    assert "seg.yaml:" in done.output and "gives 4 classes per pixel" in done.output
    assert not Path("runs").exists()
    config = write("seg2.yaml", _unet(scenes_csv.parent, loss="binary_crossentropy"))
    done = runner.invoke(main, ["train", str(config)])
    assert (
        done.exit_code == 2 and "use loss: sparse_categorical_crossentropy or dice" in done.output
    )


# --------------------------------------------------------------------------- augmentation

AUGMENT = """\
  augment:
    - {type: RandomFlip, mode: horizontal_and_vertical}
    - {type: RandomRotation, factor: 0.25, fill_mode: constant}
    - {type: RandomTranslation, height_factor: 0.2, width_factor: 0.2, fill_mode: constant}
    - {type: RandomZoom, height_factor: 0.2, fill_mode: constant}
    - {type: RandomContrast, factor: 0.2}
"""


def test_geometric_augmentation_moves_image_and_asymmetric_mask_together(write):
    import keras
    import tensorflow as tf

    from cnnctl.data.pipeline import together
    from cnnctl.model.builder import build_model, joint_augmentation

    text = ISSUE_UNET.replace("data: {path: cells}\n", "data:\n  path: cells\n" + AUGMENT)
    config = load_config(write("aug.yaml", text.replace("[128, 128, 3]", "[32, 32, 1]")))
    layers = joint_augmentation(config)
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomTranslation",
        "RandomZoom",
    ]
    assert all(getattr(layer, "interpolation", "nearest") == "nearest" for layer in layers)
    inside = [type(layer).__name__ for layer in build_model(config, 3).layers]
    assert "RandomContrast" in inside and "RandomFlip" not in inside  # photometric: image only
    keras.utils.set_random_seed(0)
    mask = np.zeros((8, 32, 32), dtype=np.int32)  # an L: class 1 its bar, class 2 its foot
    mask[:, 4:24, 6:10] = 1
    mask[:, 20:24, 10:22] = 2
    images = (mask * 100)[..., None].astype(np.float32)
    x, y = together(layers, 255)(tf.constant(images), tf.constant(mask))
    x, y = x.numpy()[..., 0], y.numpy()
    assert set(np.unique(y)) <= {0, 1, 2, 255}
    assert not np.array_equal(y[0], mask[0]) and not np.array_equal(y[0], y[1])  # moved, apart
    kept = y != 255
    assert np.array_equal(x[kept], 100 * y[kept])  # every pixel still over its own class
    assert (x[~kept] == 0).all() and (~kept).any()  # filled from outside: ignored
    assert (y == 2).any() and (y == 1).any()


def test_tta_mirrors_the_mirrored_masks_back_before_the_mean(runner, trained, scenes_csv, tmp_path):
    from cnnctl.modelfile.load import load_model

    images = [scenes_csv.parent / "images" / "test" / f"0001{i}.png" for i in range(2)]
    out = tmp_path / "tta"
    done = runner.invoke(
        main,
        ["predict", "--runs-dir", str(trained), "--tta", "horizontal_flip", "--output", str(out)]
        + [str(p) for p in images],
    )
    assert done.exit_code == 0, done.output
    assert "share" in done.output and "wrote 2 masks and overlays" in done.output
    model = load_model(trained / "seg" / "model.keras", compile=False)
    x = np.stack([np.asarray(Image.open(p))[..., None] for p in images]).astype(np.float32)
    mean = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1]))[:, :, ::-1]) / 2
    for i, path in enumerate(images):
        mask = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        assert (mask == mean[i].argmax(-1)).mean() > 0.999  # ties may break either way


def test_hostile_masks_are_skipped_never_read_a_fifo_and_never_decoded_past_the_limit(
    masks_folder, monkeypatch
):
    import os

    from cnnctl.config import DataConfig
    from cnnctl.data.images import ImageError
    from cnnctl.data.masks import load_mask_folder, read_mask
    from cnnctl.errors import DataError

    fifo = masks_folder / "masks" / "train" / "good0.png"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would hang
    arrays = load_mask_folder(masks_folder, (16, 16, 1), DataConfig(path=str(masks_folder)))
    image = masks_folder / "images" / "train" / "good0.png"  # a FIFO is no mask file at all
    assert dict(arrays.skipped)[str(image)].startswith("no mask (expected")
    monkeypatch.setenv("CNNCTL_LIMITS", "pixels=100")  # 16x16 masks: over it, header only
    with pytest.raises(DataError, match="no usable pair"):
        load_mask_folder(masks_folder, (16, 16, 1), DataConfig(path=str(masks_folder)))
    mask = masks_folder / "masks" / "train" / "good1.png"
    with pytest.raises(ImageError, match=r"good1.png: refused: 16x16 is more than 100 pixels"):
        read_mask(mask, (16, 16), 3, 255)


def test_class_weights_go_to_each_pixel_and_need_cross_entropy(write, scenes_csv, runner):
    import tensorflow as tf

    from cnnctl.data.pipeline import weighed

    text = _unet(scenes_csv.parent, loss="sparse_categorical_crossentropy", epochs=1)
    config = load_config(write("w.yaml", text + "  class_weight: {bag: 3.0}\n"))
    names = [str(i) for i in range(10)] + ["bag"]
    truth = np.array([[[0, 10], [255, 10]]])
    task = Segmentation()
    weights = task.pixel_weights(config, truth, names)
    assert weights.tolist() == [1.0] * 10 + [3.0]
    balanced = load_config(write("b.yaml", text + "  class_weight: balanced\n"))
    counts = task.pixel_weights(balanced, np.array([[[0, 0, 0, 1]]]), ["a", "b"])
    assert counts.tolist() == pytest.approx([4 / 6, 4 / 2])
    _, _, w = weighed(weights, 255)(tf.zeros((1, 2, 2, 1)), tf.constant(truth))
    assert w.numpy().tolist() == [[[1.0, 3.0], [0.0, 3.0]]]  # the ignored pixel weighs 0
    with pytest.raises(ConfigError, match=r"w.yaml:\d+:\d+: train.class_weight.nope: no class"):
        task.pixel_weights(
            load_config(write("w.yaml", text + "  class_weight: {nope: 2}\n")), truth, names
        )
    dice_text = _unet(scenes_csv.parent) + "  class_weight: balanced\n"
    dice = load_config(write("d.yaml", dice_text))
    with pytest.raises(
        ConfigError, match=r"d.yaml:\d+:\d+: train.class_weight: .*not crossentropy_dice"
    ):
        task.class_weights(dice, truth, names)
    checked = runner.invoke(main, ["validate", str(write("d2.yaml", dice_text))])
    assert checked.exit_code == 2 and "not crossentropy_dice" in checked.output  # no masks read
    done = runner.invoke(main, ["train", "b.yaml", "--set", "data.limit=64"])
    assert done.exit_code == 0, done.output
    assert "mean_iou" in json.loads(Path("runs/seg/metrics.json").read_text())["test"]


def test_explain_maps_the_pixels_of_a_class(runner, trained, scenes_csv, tmp_path):
    """Grad-CAM of a segmentation model explains one class's predicted pixels: by default the
    class other than the background covering most pixels (the background where nothing else is
    predicted), a named class with --class."""
    import json

    image = str(scenes_csv.parent / "images" / "test" / "00010.png")
    predicted = runner.invoke(main, ["predict", "--runs-dir", str(trained), "--json", image])
    shares = {t["label"]: t["probability"] for t in json.loads(predicted.stdout)[0]["top"]}
    names = json.loads((trained / "seg" / "classes.json").read_text())
    items = {name: share for name, share in shares.items() if name != names[0]}
    out = tmp_path / "maps"
    args = [
        "explain",
        "--runs-dir",
        str(trained),
        "--json",
        "--format",
        "npy",
        "--output",
        str(out),
    ]
    done = runner.invoke(main, [*args, image])
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.stdout)
    assert row["label"] == (max(items, key=items.get) if items else names[0])
    heatmap = np.load(next(Path(f) for f in row["files"] if f.endswith(".npy")))
    assert heatmap.shape == (64, 64) and 0 <= heatmap.min() and heatmap.max() <= 1
    named = runner.invoke(main, [*args, "--class", names[2], image])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)[0]["label"] == names[2]


def test_runs_shows_mean_iou_as_the_headline(runner, trained):
    import json

    done = runner.invoke(main, ["runs", str(trained), "--json"])
    assert done.exit_code == 0, done.output
    (row,) = [r for r in json.loads(done.stdout) if r["name"] == "seg"]
    test = json.loads((trained / "seg" / "metrics.json").read_text())["test"]
    assert (row["task"], row["headline"], row["test_value"]) == (
        "segmentation",
        "mean_iou",
        test["mean_iou"],
    )


# --------------------------------------------------------------------------- streamed pairs


def _pair_batches(path: Path, cache: str, **extra) -> list[tuple[np.ndarray, ...]]:
    """Two epochs of training batches of the scenes as `cache` places them."""
    from cnnctl.config import DataConfig
    from cnnctl.data.dataset import load_dataset
    from cnnctl.data.pipeline import training_batches
    from cnnctl.tasks import task_named

    data = DataConfig(path=str(path), cache=cache, validation=0.2, limit=96)
    dataset = load_dataset(data, (64, 64, 1), seed=5, task=task_named("segmentation"))
    batches, steps = training_batches(
        dataset.x_train,
        dataset.y_train,
        batch_size=32,
        seed=5,
        num_classes=11,
        one_hot=False,
        first_epoch=0,
        epochs=2,
        **extra,
    )
    return [tuple(np.asarray(t) for t in batch) for batch in batches]


def test_streamed_pairs_give_the_in_memory_batches_and_each_worker_its_share(
    scenes_csv, monkeypatch
):
    weights = np.linspace(0.5, 2.0, 11).astype(np.float32)
    memory = _pair_batches(scenes_csv.parent, "memory", pixel_weights=weights)
    assert len(memory) == 6 and memory[0][1].shape == (32, 64, 64)
    for mode in ("none", "disk"):
        streamed = _pair_batches(scenes_csv.parent, mode, pixel_weights=weights)
        assert len(streamed) == len(memory)
        for (x1, y1, w1), (x2, y2, w2) in zip(memory, streamed, strict=True):
            assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and np.array_equal(w1, w2)
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}
    shares = []
    for index in range(3):
        monkeypatch.setenv(
            "TF_CONFIG",
            json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        shares.append(_pair_batches(scenes_csv.parent, "none", pixel_weights=weights))
    for step, whole in enumerate(memory):  # 32 split three ways: 10, 11 and 11 pairs
        parts, n = [share[step] for share in shares], len(whole[0])
        assert [len(part[0]) for part in parts] == [n * (i + 1) // 3 - n * i // 3 for i in range(3)]
        for k in range(3):
            assert np.array_equal(np.concatenate([part[k] for part in parts]), whole[k])


def test_streamed_pairs_move_image_and_mask_together(scenes_csv, write):
    import keras

    from cnnctl.model.builder import joint_augmentation

    text = _unet(scenes_csv.parent).replace("  validation: 0.2\n", "  validation: 0.2\n" + AUGMENT)
    config = load_config(write("aug.yaml", text))
    found = {}
    for mode in ("memory", "none"):
        keras.utils.set_random_seed(0)
        found[mode] = _pair_batches(scenes_csv.parent, mode, joint=joint_augmentation(config))
    still = _pair_batches(scenes_csv.parent, "none")
    images, masks, weights = found["none"][0]
    assert not np.array_equal(masks, still[0][1])  # moved
    assert (masks == 255).any() and set(np.unique(masks)) <= set(range(11)) | {255}
    assert weights.shape == masks.shape and (weights == 1).all()
    for (x1, y1, *_), (x2, y2, *_) in zip(found["memory"], found["none"], strict=True):
        assert np.array_equal(y1, y2) and np.allclose(x1, x2, atol=1e-4)  # moved as in memory


@pytest.mark.slow  # two trainings; the batches are compared in the default tests
@pytest.mark.parametrize(
    ("cache", "loss"), [("none", "crossentropy_dice"), ("disk", "sparse_categorical_crossentropy")]
)
def test_training_streamed_pairs_gives_the_in_memory_first_epoch_loss(
    runner, write, scenes_csv, cache, loss
):
    import csv

    def first_loss(name: str, mode: str) -> float:
        text = _unet(scenes_csv.parent, name=name, epochs=1, loss=loss).replace(
            "  validation: 0.2\n", f"  validation: 0.2\n  limit: 96\n  cache: {mode}\n"
        )
        done = runner.invoke(main, ["train", str(write(f"{name}.yaml", text))])
        assert done.exit_code == 0, done.output
        with open(f"runs/{name}/metrics.csv") as stream:
            return float(next(csv.DictReader(stream))["loss"])

    memory, streamed = first_loss("memory", "memory"), first_loss(cache, cache)
    assert streamed == pytest.approx(memory, rel=1e-5)


def test_a_bad_mask_among_streamed_pairs_is_skipped_and_reported(masks_folder, runner, write):
    from cnnctl.config import DataConfig
    from cnnctl.data.masks import load_mask_folder

    expected = load_mask_folder(masks_folder, (16, 16, 1), DataConfig(path=str(masks_folder)))
    for mode in ("none", "disk"):
        data = DataConfig(path=str(masks_folder), cache=mode)
        arrays = load_mask_folder(masks_folder, (16, 16, 1), data)
        assert type(arrays.x_train).__name__ == "FileImages" and len(arrays.x_train) == 8
        assert sorted(arrays.skipped) == sorted(expected.skipped)
        assert np.array_equal(np.asarray(arrays.x_train), expected.x_train)
        assert type(arrays.y_train).__name__ == "FileMasks"  # paths: read while streaming
        assert np.array_equal(arrays.y_train, expected.y_train)  # palette: indices, as in memory
        assert arrays.y_train.dtype == np.uint8  # a quarter of the in-memory route's int32
    config = write(
        "cells.yaml",
        ISSUE_UNET.replace("data: {path: cells}", f"data: {{path: {masks_folder}, cache: none}}")
        .replace("[128, 128, 3]", "[16, 16, 1]")
        .replace("name: unet", "name: unet\ntrain: {epochs: 1, batch_size: 4}"),
    )
    image = masks_folder / "images" / "train" / "good2.png"
    data = image.read_bytes()  # its header reads, its pixels do not: found while streaming
    image.write_bytes(data[: data.index(b"IDAT") + 12])
    done = runner.invoke(main, ["train", str(config)])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "5 files skipped" in text and "could not be decoded" in text
    listed = Path("runs/unet/skipped.csv").read_text()
    assert "badvalue.png" in listed and "value 7 at x=5, y=3" in listed
    assert "good2.png,damaged or truncated image" in listed


def test_streamed_masks_are_files_not_pixels_and_one_changed_since_is_skipped_and_named(
    masks_folder, scenes_csv
):
    from cnnctl.config import DataConfig
    from cnnctl.data.dataset import load_dataset
    from cnnctl.data.masks import FileMasks, load_mask_folder
    from cnnctl.data.stream import eval_batches, eval_skipped, failures
    from cnnctl.tasks import task_named

    task = task_named("segmentation")
    for mode in ("none", "disk"):  # what is held for 384 masks of 64x64: their file names
        data = DataConfig(path=str(scenes_csv.parent), cache=mode, validation=0.2)
        dataset = load_dataset(data, (64, 64, 1), seed=5, task=task)
        y = dataset.y_train
        assert isinstance(y, FileMasks) and len(y) == 288 and y.shape == (288, 64, 64)
        held = [v.nbytes for v in vars(y).values() if isinstance(v, np.ndarray)]
        assert sum(held) < 64 * len(y) < 4096 * len(y)  # a few numbers a file, no pixels
        assert np.asarray(y[:3]).shape == (3, 64, 64)
    data = DataConfig(path=str(masks_folder), cache="none")
    arrays = load_mask_folder(masks_folder, (16, 16, 1), data)
    x, y = arrays.x_train, arrays.y_train
    path = Path(y.paths[1])
    path.write_bytes(path.read_bytes()[:60])  # checked before training; cut short since
    (images, masks, weights), *_ = list(
        eval_batches(x, y, batch_size=8, num_classes=3, one_hot=False)
    )
    assert weights.numpy().tolist() == [1, 0, 1, 1, 1, 1, 1, 1]  # left out, its place kept
    assert not images[1].numpy().any() and not masks[1].numpy().any()
    (position,) = eval_skipped(x)
    ((named, reason),) = failures(x, [position], y)
    assert named == str(path) and "damaged or truncated" in reason
    disk = load_mask_folder(
        masks_folder, (16, 16, 1), DataConfig(path=str(masks_folder), cache="disk")
    )
    assert sorted(p for p, _ in disk.skipped) == sorted(
        [*(p for p, _ in arrays.skipped), str(path)]
    )
    kept = np.asarray(disk.y_train)
    for mask in disk.y_train.paths:
        Path(mask).unlink()  # read from the decode cache every epoch, not from the files
    found = list(
        eval_batches(disk.x_train, disk.y_train, batch_size=4, num_classes=3, one_hot=False)
    )
    assert np.array_equal(np.concatenate([m for _, m, _ in found]), kept)
    assert all((w.numpy() == 1).all() for _, _, w in found)


# --------------------------------------------------------------------------- Backbone encoder

BACKBONE_UNET = """\
name: {name}
task: segmentation
data:
  path: {path}
  validation: 0.2
model:
  input_shape: [64, 64, 1]
  layers:
    - {{type: Backbone, name: MobileNetV2, weights: none, decoder: unet{extra}}}
    - {{type: Conv2D, filters: 11, kernel_size: 1, activation: softmax}}
train:
  epochs: 1
  batch_size: 32
  optimizer: {{type: Adam, learning_rate: 0.003}}
"""


def test_a_backbone_encoder_with_a_unet_decoder_segments_at_the_input_size(write, tmp_path):
    """MobileNetV2 as the encoder: its last feature map at each of 32, 16, 8 and 4 pixels is
    a skip, the decoder goes back to 64x64; the model saves and loads through the vetted
    loader with the same outputs."""
    from cnnctl.model.builder import build_model
    from cnnctl.modelfile.load import load_model

    config = load_config(write("bb.yaml", BACKBONE_UNET.format(name="bb", path=tmp_path, extra="")))
    model = build_model(config, 11)
    assert model.output_shape == (None, 64, 64, 11)
    block = model.get_layer("backbone_0")
    encoder = next(layer for layer in block.layers if layer.name.startswith("mobilenet"))
    assert [tuple(t.shape[1:3]) for t in encoder.outputs] == [
        (32, 32),
        (16, 16),
        (8, 8),
        (4, 4),
        (2, 2),
    ]
    concat = [layer for layer in block.layers if "concat" in layer.name]
    assert len(concat) == 4  # four skips; the last level goes back to 64x64 without one
    model.save(tmp_path / "bb.keras")
    loaded = load_model(tmp_path / "bb.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


def test_unet_levels_take_the_last_layer_of_each_height_that_at_least_two_thirds():
    """Valid-padded encoders (InceptionV3 at 75 pixels) shrink by odd steps: 37, 35, 17, 8, 3, 1."""
    from cnnctl.model.blocks import unet_levels

    sizes = [
        ("c1", 37),
        ("c2", 35),
        ("c3", 35),
        ("p1", 17),
        ("m1", 17),
        ("m2", 8),
        ("m3", 3),
        ("out", 1),
    ]
    assert unet_levels(sizes, 75) == ["c1", "m1", "m2", "m3"]
    assert unet_levels([("a", 32), ("b", 32), ("c", 16), ("d", 8)], 64) == ["b", "c"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "decoder: unett",
            "model.layers[0].decoder: unknown value 'unett' (did you mean 'unet'?)",
        ),
        (
            ", pooling: avg",
            "model.layers[0].pooling: a U-Net decoder needs the encoder's feature map",
        ),
        (
            ", decoder_filters: [64, 32]",
            "model.layers[0].decoder_filters: MobileNetV2 at this size has 5 decoder levels",
        ),
    ],
)
def test_backbone_unet_mistakes_are_named_at_their_key(write, tmp_path, extra, message):
    from cnnctl.errors import CnnctlError
    from cnnctl.model.builder import build_model

    text = BACKBONE_UNET.format(name="bb", path=tmp_path, extra="")
    if extra.startswith(","):
        text = text.replace("decoder: unet", "decoder: unet" + extra)
    else:
        text = text.replace("decoder: unet", extra)
    with pytest.raises(CnnctlError) as info:
        build_model(load_config(write("bb.yaml", text)), 11)
    assert message in info.value.format_message()


def test_decoder_filters_without_a_decoder_is_refused(write, tmp_path):
    from cnnctl.errors import CnnctlError
    from cnnctl.model.builder import build_model

    text = BACKBONE_UNET.format(name="bb", path=tmp_path, extra="").replace(
        "decoder: unet", "pooling: none, decoder_filters: [8]"
    )
    with pytest.raises(CnnctlError) as info:
        build_model(load_config(write("bb.yaml", text)), 11)
    assert "decoder_filters needs decoder: unet" in info.value.format_message()


@pytest.mark.slow
def test_a_backbone_unet_trains_evaluates_and_exports(runner, scenes_csv, write, tmp_path):
    """One epoch of the MobileNetV2 U-Net (random weights, small decoder) on the small scenes:
    trained, scored with mean IoU, exported to ONNX with per-pixel parity."""
    config = write(
        "bbunet.yaml",
        BACKBONE_UNET.format(
            name="bbunet", path=scenes_csv.parent, extra=", decoder_filters: [32, 32, 16, 16, 8]"
        ),
    )
    runs = tmp_path / "runs"
    done = runner.invoke(main, ["train", str(config), "--runs-dir", str(runs), "--json"])
    assert done.exit_code == 0, done.output
    metrics = json.loads((runs / "bbunet" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["mean_iou"] <= 1
    exported = runner.invoke(
        main, ["export", "bbunet", "--runs-dir", str(runs), "--format", "onnx"]
    )
    assert exported.exit_code == 0, exported.output
    assert "pixel agreement" in exported.output


def test_a_bare_copy_of_the_export_predicts_and_evaluates_as_with_its_export_json(
    runner, trained, scenes_csv, tmp_path
):
    """The review's finding: model.onnx copied alone was read as a classifier (an internal
    TypeError). The file carries its record: the copy gives the same masks, rows and mean IoU;
    one without any record is still read per pixel, with a warning; one whose export.json says
    classification stops in one line."""
    from bare_copies import copies, predict_rows, without_record

    run = trained / "seg"
    if not (run / "export" / "model.onnx").is_file():
        done = runner.invoke(
            main, ["export", "seg", "--runs-dir", str(trained), "--format", "onnx"]
        )
        assert done.exit_code == 0, done.output
    beside, bare = copies(run / "export" / "model.onnx", tmp_path)
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(3)]
    want, _ = predict_rows(runner, beside, images, "--output", str(tmp_path / "beside-masks"))
    got, warned = predict_rows(runner, bare, images, "--output", str(tmp_path / "bare-masks"))
    assert got == want and "warning" not in warned
    assert want[0]["top"][0]["label"] == json.loads((run / "classes.json").read_text())[0]
    for name in (Path(p).stem + ".mask.png" for p in images):
        a = np.asarray(Image.open(tmp_path / "beside-masks" / name))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "bare-masks" / name)))
    config = str(trained.parent / "seg.yaml")
    scores = [
        runner.invoke(main, ["evaluate", "--model", str(m), "--data", config, "--json"])
        for m in (beside, bare)
    ]
    assert [s.exit_code for s in scores] == [0, 0], scores[1].output
    assert json.loads(scores[1].stdout)["mean_iou"] == json.loads(scores[0].stdout)["mean_iou"]

    old = without_record(bare, tmp_path / "old" / "model.onnx")
    rows, warned = predict_rows(runner, old, images)
    assert [r["top"][0]["index"] for r in rows] == [r["top"][0]["index"] for r in want]
    assert f"warning: {old}: no export.json beside it and no cnnctl record inside" in warned
    assert "read as segmentation masks" in warned and len(warned.strip().splitlines()) == 1

    (tmp_path / "old" / "export.json").write_text(
        json.dumps({"exports": [{"file": "model.onnx", "task": "classification"}]})
    )
    for command in (["predict", *images], ["explain", images[0], "--method", "occlusion"]):
        refused = runner.invoke(main, [*command, "--model", str(old)])
        assert refused.exit_code == 2, refused.output
        assert "its outputs are shaped [None, 64, 64, 11], not what task: classification" in (
            refused.stderr
        )
        assert "internal error" not in refused.stderr
