"""Duplicates refused where they are written: a class name twice in data.classes or
classes.txt, an image twice in a CSV of paths (labels agreeing or not: one image could be in
train and in validation)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.errors import DataError

REPO = Path(__file__).resolve().parents[1]

SEGMENTATION = """\
name: cells
task: segmentation
data:
  path: cells
{classes}model:
  input_shape: [16, 16, 1]
  layers:
    - {{type: Conv2D, filters: 3, kernel_size: 1, activation: softmax}}
"""


# --------------------------------------------------------------------------- data.classes


@pytest.mark.parametrize(
    "classes, message",
    [
        (
            "  classes:\n    - background\n    - bag\n    - hat\n    - bag\n",
            "cells.yaml:9:7: data.classes[3]: duplicate class name 'bag', already data.classes[1]",
        ),
        (
            '  classes: [background, bag, " bag "]\n',
            "cells.yaml:5:30: data.classes[2]: duplicate class name 'bag', already data.classes[1]",
        ),
        ('  classes: [background, "", bag]\n', "cells.yaml:5:25: data.classes[1]: empty class"),
    ],
    ids=["repeated", "spaces-aside", "empty"],
)
@pytest.mark.parametrize("command", ["validate", "train"])
def test_data_classes_with_a_repeated_or_empty_name_are_refused_at_the_item(
    runner, write, tmp_path, classes, message, command
):
    write("cells.yaml", SEGMENTATION.format(classes=classes))
    result = runner.invoke(main, [command, "cells.yaml"])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_a_set_override_with_a_repeated_class_is_named_by_its_option(runner, write):
    write("cells.yaml", SEGMENTATION.format(classes=""))
    result = runner.invoke(main, ["validate", "cells.yaml", "--set", "data.classes=[a, b, a]"])
    assert result.exit_code == 2, result.output
    assert (
        "--set data.classes=[a, b, a]: data.classes[2]: duplicate class name 'a', already "
        "data.classes[0]"
    ) in result.output


# --------------------------------------------------------------------------- classes.txt


def _mask_folder(root: Path, classes: bytes) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_bytes(classes)
    return root


@pytest.mark.parametrize(
    "text, message",
    [
        (
            b"background\nbag\nhat\nbag\n",
            "classes.txt:4: duplicate class name 'bag', already on line 2",
        ),
        (
            b"background\nbag\n bag \n",
            "classes.txt:3: duplicate class name 'bag', already on line 2",
        ),
        (b"background\n\nbag\n", "classes.txt:2: empty line; line n names mask value n-1"),
        (b"\nbackground\nbag\n", "classes.txt:1: empty line"),
    ],
    ids=["repeated", "spaces-aside", "blank-between", "blank-first"],
)
def test_classes_txt_with_a_repeated_name_or_a_blank_line_is_refused_at_its_line(
    runner, write, tmp_path, text, message
):
    _mask_folder(tmp_path / "cells", text)
    write("cells.yaml", SEGMENTATION.format(classes=""))
    result = runner.invoke(main, ["validate", "cells.yaml"])
    assert result.exit_code == 2, result.output
    assert f"Error: cells/{message}" in result.output, result.output


def test_classes_txt_may_end_in_blank_lines_have_crlf_and_a_bom(tmp_path):
    from cnnctl.config import DataConfig
    from cnnctl.data.masks import class_names

    folder = _mask_folder(
        tmp_path / "cells", b"\xef\xbb\xbfbackground\r\n cell \r\nnucleus\r\n\n \n"
    )
    names = class_names(folder, DataConfig(path=str(folder)))
    assert names == ("background", "cell", "nucleus")


# --------------------------------------------------------------------------- CSV of paths


def _images_csv(folder: Path, rows: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "images.csv").write_text("path,label,split\n" + rows)
    return folder / "images.csv"


@pytest.mark.parametrize(
    "rows, message",
    [
        ("a.png,cat,train\nb.png,dog,train\na.png,cat,test\n", "lines 2 and 4"),
        ("a.png,cat,train\nb.png,dog,train\na.png,dog,train\n", "lines 2 and 4"),
        ("a.png,cat,train\nb.png,dog,train\n./a.png,dog,test\n", "image './a.png' is listed twice"),
        ("a.png,cat,train\nb.png,dog,train\n a.png ,cat,val\n", "image 'a.png' is listed twice"),
    ],
    ids=["same-label-other-split", "conflicting-label", "dot-slash", "spaces"],
)
def test_an_image_listed_twice_is_refused_naming_both_lines(tmp_path, rows, message):
    from cnnctl.data.index import index_csv

    csv_file = _images_csv(tmp_path / "photos", rows)
    with pytest.raises(DataError, match=r"images\.csv:4: image .* is listed twice, lines 2 and 4"):
        index_csv(csv_file, "label")
    with pytest.raises(DataError) as error:
        index_csv(csv_file, "label")
    assert str(csv_file) in error.value.message and message in error.value.message
    assert error.value.hint == "list each image once: delete one of the two rows"


def test_the_same_name_in_two_folders_is_two_images(tmp_path):
    from cnnctl.data.index import index_csv

    csv_file = _images_csv(tmp_path / "photos", "a.png,cat,train\nb.png,dog,train\n")
    (tmp_path / "photos" / "more").mkdir()
    Image.open(tmp_path / "photos" / "c.png").save(tmp_path / "photos" / "more" / "a.png")
    csv_file.write_text("path,label\na.png,cat\nmore/a.png,cat\nb.png,dog\n")
    assert len(index_csv(csv_file, "label").paths) == 3


def test_train_refuses_a_classification_csv_with_an_image_twice(runner, write, tmp_path):
    _images_csv(tmp_path / "photos", "a.png,cat\nb.png,dog\nc.png,cat\nb.png,cat\n")
    write(
        "photos.yaml",
        "data: {path: photos/images.csv}\nmodel:\n  input_shape: [8, 8, 1]\n  layers:\n"
        "    - Flatten\n    - {type: Dense, units: 2, activation: softmax}\n",
    )
    result = runner.invoke(main, ["train", "photos.yaml"])
    assert result.exit_code == 2, result.output
    assert "photos/images.csv:5: image 'b.png' is listed twice, lines 3 and 5" in result.output
    assert not (tmp_path / "runs").exists()


def _scenes_with_a_copied_row(scenes_csv: Path, path: Path) -> Path:
    """The scenes' labels.csv (absolute paths) with its 3rd row again at the end, count + 1:
    the review's finding."""
    rows = list(csv.DictReader(open(scenes_csv)))
    for row in rows:
        row["path"] = str(scenes_csv.parent / row["path"])
    rows.append({**rows[2], "count": str(int(rows[2]["count"]) + 1), "split": "test"})
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("config", ["scenes_count.yaml", "scenes_multilabel.yaml"])
def test_datasets_check_refuses_a_label_csv_with_a_row_copied(runner, tmp_path, scenes_csv, config):
    data = _scenes_with_a_copied_row(scenes_csv, tmp_path / "labels.csv")
    last = len(data.read_text().splitlines())
    result = runner.invoke(
        main, ["datasets", "check", str(REPO / "configs" / config), "--set", f"data.path={data}"]
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{data}:{last}: image " in text and f"is listed twice, lines 4 and {last}" in text
