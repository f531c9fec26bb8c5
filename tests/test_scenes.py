"""Fashion scenes (data/scenes.py, `cnnctl datasets make`): made offline from real items.

The items are a small real Fashion-MNIST subset when Debian's copy is on the machine, else real
MNIST digits standing in for them (the same IDX files), so these tests run anywhere offline.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.data import scenes
from cnnctl.data.scenes import SCENE_CLASSES, compose_scenes, make_scenes
from cnnctl.errors import DataError

from conftest import write_idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
TRAIN, TEST = 24, 8


def _write_folder(folder: Path, train: tuple, test: tuple) -> None:
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", train[0])
    write_idx(folder / "train-labels-idx1-ubyte.gz", train[1])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test[0])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test[1])


@pytest.fixture(scope="session")
def items(mnist_test_set) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real items per split: 1,200 train and 300 test."""
    from cnnctl.data.sources import read_idx

    if (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file():
        x = read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz")
        y = read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz")
    else:
        x, y = mnist_test_set
    return {"train": (x[:1200], y[:1200]), "test": (x[1200:1500], y[1200:1500])}


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory, items) -> Path:
    root = tmp_path_factory.mktemp("fashion-data")
    _write_folder(root / "fashion_mnist", items["train"], items["test"])
    return root


@pytest.fixture
def fashion(monkeypatch, fashion_root) -> Path:
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(fashion_root))
    return fashion_root


@pytest.fixture
def made(fashion, tmp_path) -> Path:
    make_scenes(tmp_path / "scenes", TRAIN, TEST, seed=7, offline=True)
    return tmp_path / "scenes"


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_scenes_per_split_with_images_masks_and_tables(made):
    for split, count in (("train", TRAIN), ("test", TEST)):
        names = [f"{n:05d}.png" for n in range(count)]
        assert sorted(p.name for p in (made / "images" / split).iterdir()) == names
        assert sorted(p.name for p in (made / "masks" / split).iterdir()) == names
    rows = _rows(made)
    assert list(rows[0]) == ["path", "split", "tags", "count"]
    assert [r["split"] for r in rows] == ["train"] * TRAIN + ["test"] * TEST
    assert rows[TRAIN]["path"] == "images/test/00000.png"
    assert _png(made / "images/train/00000.png").shape == (64, 64)
    assert (made / "classes.txt").read_text().split("\n") == ["background", *SCENE_CLASSES, ""]
    assert sorted(p.name for p in made.iterdir()) == [
        "classes.txt",
        "images",
        "labels.csv",
        "masks",
    ]


def test_masks_hold_class_plus_one_background_and_ignore_only(made):
    for row in _rows(made):
        image = _png(made / row["path"])
        mask = _png(made / row["path"].replace("images/", "masks/", 1))
        assert set(np.unique(mask)) <= {0, *range(1, 11), 255}
        assert np.array_equal(mask > 0, image > 0)
        assert np.all((mask == 255) == ((image > 0) & (image < scenes.BRIGHT)))


def test_labels_agree_with_masks(made):
    for row in _rows(made):
        mask = _png(made / row["path"].replace("images/", "masks/", 1))
        present = [SCENE_CLASSES[v - 1] for v in np.unique(mask) if 1 <= v <= 10]
        assert row["tags"] == " ".join(present)
        assert len(present) <= int(row["count"]) <= 3


def test_written_scenes_are_the_composed_ones_whose_items_do_not_overlap(made, items):
    """The files are the generator's scenes; in each, every item keeps all its pixels."""
    for number, split in enumerate(("train", "test")):
        x, y = items[split]
        found = compose_scenes(x, y, TRAIN if split == "train" else TEST, 64, _rng(7, number))
        for n, scene in enumerate(found):
            mask = _png(made / f"masks/{split}/{n:05d}.png")
            assert np.array_equal(mask, scene.mask)
            assert np.array_equal(_png(made / f"images/{split}/{n:05d}.png"), scene.image)
            # Overlapping items would hide some of each other's pixels.
            assert (mask > 0).sum() == sum(int((x[i] > 0).sum()) for i in scene.items)
            for item, (top, left, h, w) in zip(scene.items, scene.boxes, strict=True):
                inside = mask[top : top + h, left : left + w]
                assert set(np.unique(inside)) <= {0, int(y[item]) + 1, 255}
                assert (inside > 0).sum() == (x[item] > 0).sum()


def _rng(seed: int, split_number: int) -> np.random.Generator:
    return np.random.default_rng([seed, split_number])


def test_boxes_keep_apart_and_items_are_used_once_before_again(items):
    x, y = items["test"]
    found = list(compose_scenes(x, y, 200, 64, np.random.default_rng(0)))
    used = [i for scene in found for i in scene.items]
    assert len(used) > len(x)  # 200 scenes of 1-3 items need more than the 300 items
    usable = len(set(used))
    assert len(set(used[:usable])) == usable  # every item once, then again
    for scene in found:
        assert 1 <= len(scene.items) <= 3
        assert scene.tags == " ".join(SCENE_CLASSES[c] for c in sorted(set(scene.classes)))
        for a in range(len(scene.boxes)):
            for b in range(a):
                assert scenes._near(scene.boxes[a], scene.boxes[b]) is False


@pytest.mark.parametrize("size", [60, 64, 97])
def test_three_full_squares_fit_in_the_grid_when_random_tries_fail(size):
    rng = np.random.default_rng(0)
    corners = scenes._place([(28, 28)] * 3, size, rng, tries=0)
    boxes = [(top, left, 28, 28) for top, left in corners]
    assert all(
        0 <= t and t + 28 <= size and 0 <= left and left + 28 <= size for t, left, *_ in boxes
    )
    assert not any(scenes._near(boxes[a], boxes[b]) for a in range(3) for b in range(a))


def test_test_scenes_take_only_test_items(tmp_path, monkeypatch, mnist_test_set):
    """Train digits 0-4, test digits 5-9: each split's scenes show only its own classes."""
    x, y = mnist_test_set
    low, high = np.flatnonzero(y < 5)[:300], np.flatnonzero(y >= 5)[:100]
    _write_folder(tmp_path / "data" / "fashion_mnist", (x[low], y[low]), (x[high], y[high]))
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(tmp_path / "data"))
    make_scenes(tmp_path / "scenes", 40, 20, offline=True)
    for row in _rows(tmp_path / "scenes"):
        mask = _png(tmp_path / "scenes" / row["path"].replace("images/", "masks/", 1))
        classes = {int(v) - 1 for v in np.unique(mask) if 1 <= v <= 10}
        assert classes <= (set(range(5)) if row["split"] == "train" else set(range(5, 10)))


def test_same_seed_same_bytes_other_seed_other_scenes(made, tmp_path):
    make_scenes(tmp_path / "again", TRAIN, TEST, seed=7, offline=True)
    make_scenes(tmp_path / "other", TRAIN, TEST, seed=8, offline=True)
    files = sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert all((made / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    assert (made / "labels.csv").read_bytes() != (tmp_path / "other" / "labels.csv").read_bytes()


def test_labels_csv_is_a_csv_of_paths_cnnctl_reads(made):
    from cnnctl.data.index import index_csv, is_path_csv

    assert is_path_csv(made / "labels.csv")
    index = index_csv(made / "labels.csv", "count")
    assert (len(index.select("train")), len(index.select("test"))) == (TRAIN, TEST)
    assert not index.skipped
    assert set(index.class_names) <= {"1", "2", "3"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda p: (p.mkdir(), (p / "keep.txt").write_text("mine")),
            "already exists and is not empty",
        ),
        (lambda p: p.write_text("a file"), "exists and is not a folder"),
    ],
    ids=["non-empty-folder", "a-file"],
)
def test_an_existing_dir_is_refused_untouched(runner, fashion, tmp_path, setup, message):
    setup(tmp_path / "scenes")
    before = sorted(tmp_path.iterdir())
    result = runner.invoke(main, ["datasets", "make", "fashion-scenes", "scenes", "--count", "6"])
    assert result.exit_code == 2, result.output
    assert f"scenes: {message}" in result.output
    assert "give a new folder" in result.output
    assert sorted(tmp_path.iterdir()) == before


def test_an_empty_dir_is_filled(runner, fashion, tmp_path):
    (tmp_path / "scenes").mkdir()
    result = runner.invoke(main, ["datasets", "make", "fashion-scenes", "scenes", "--count", "6"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 train + 1 test scenes of 64x64" in result.output
    assert "to scenes/: images/, masks/, labels.csv, classes.txt" in result.output
    assert len(_rows(tmp_path / "scenes")) == 7


def test_an_interrupted_run_leaves_nothing(fashion, tmp_path, monkeypatch):
    def interrupt(work, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(scenes, "_write_tables", interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_scenes(tmp_path / "out" / "scenes", TRAIN, TEST, offline=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_dir_filled_meanwhile_is_refused_and_kept(fashion, tmp_path, monkeypatch):
    write_tables = scenes._write_tables

    def someone_else_writes(work, rows):
        write_tables(work, rows)
        (tmp_path / "scenes").mkdir()
        (tmp_path / "scenes" / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(scenes, "_write_tables", someone_else_writes)
    with pytest.raises(DataError, match="scenes: cannot put the scenes there") as error:
        make_scenes(tmp_path / "scenes", TRAIN, TEST, offline=True)
    assert "delete this one to make the scenes again" in error.value.format_message()
    assert [p.name for p in (tmp_path / "scenes").iterdir()] == ["theirs.txt"]
    assert not list(tmp_path.glob(".scenes.*"))  # nor a half-written copy beside it


def test_scenes_too_small_for_three_items_are_refused(fashion, tmp_path):
    with pytest.raises(DataError, match="scenes of 40x40 pixels are too small") as error:
        make_scenes(tmp_path / "scenes", TRAIN, TEST, size=40, offline=True)
    assert "use at least 60" in error.value.format_message()


def test_items_too_faint_are_refused():
    faint = np.full((5, 28, 28), scenes.BRIGHT - 1, np.uint8)
    with pytest.raises(DataError, match="no Fashion-MNIST item is bright enough"):
        list(compose_scenes(faint, np.zeros(5), 3, 64, np.random.default_rng(0)))


def test_the_command_imports_no_tensorflow(fashion, tmp_path):
    """As a user types it, in a fresh process: the scenes are made without TensorFlow."""
    code = (
        "import sys; from cnnctl.cli import main\n"
        "args = ['--offline', 'datasets', 'make', 'fashion-scenes', 'out', '--count', '12']\n"
        "try:\n    main(args)\n"
        "except SystemExit as end:\n    print('exit', end.code, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 12 train + 2 test scenes of 64x64" in done.stdout
    assert done.stdout.strip().endswith("exit 0 False")
    assert (tmp_path / "out" / "labels.csv").is_file()
