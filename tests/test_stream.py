"""Image folders streamed from disk: batches as in memory, skips reported, a safe decode cache."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.config import DataConfig
from cnnctl.data.dataset import load_dataset
from cnnctl.data.pipeline import eval_batches, training_batches
from cnnctl.errors import DataError

from conftest import SMALL

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"  # conftest points $CNNCTL_CACHE_DIR here


def write_images(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Real digits as PNG and JPEG (one in five RGB, one in seven 32x32: resized on reading)."""
    for index, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        picture = picture.convert("RGB") if index % 5 == 0 else picture
        picture = picture.resize((32, 32)) if index % 7 == 0 else picture
        picture.save(folder / (f"{index:05d}.png" if index % 2 else f"{index:05d}.jpg"))


@pytest.fixture
def folder(tmp_path, mnist_test_set) -> Path:
    x, y = mnist_test_set
    write_images(tmp_path / "digits" / "train", x[:1200], y[:1200])
    write_images(tmp_path / "digits" / "test", x[8000:8300], y[8000:8300])
    return tmp_path / "digits"


def config_for(write, path: Path, extra: str = "") -> Path:
    return write(
        "stream.yaml",
        SMALL.replace("  dataset: mnist\n  limit: 4000\n", f"  path: {path}\n{extra}"),
    )


def batches(data: DataConfig) -> tuple[list, list]:
    dataset = load_dataset(data, (28, 28, 1), seed=5)
    train, _ = training_batches(
        dataset.x_train,
        dataset.y_train,
        batch_size=64,
        seed=5,
        num_classes=10,
        one_hot=False,
        first_epoch=1,
        epochs=3,
    )
    val = eval_batches(dataset.x_val, dataset.y_val, batch_size=100, num_classes=10, one_hot=False)
    return (
        [(b[0].numpy(), b[1].numpy()) for b in train],
        [(b[0].numpy(), b[1].numpy()) for b in val],
    )


def test_streamed_and_in_memory_batches_are_the_same(folder):
    memory = batches(DataConfig(path=str(folder), cache="memory", validation=0.1))
    for mode in ("none", "disk"):
        streamed = batches(DataConfig(path=str(folder), cache=mode, validation=0.1))
        for ours, theirs in zip(memory, streamed, strict=True):
            assert len(ours) == len(theirs) and len(ours) > 1
            for (x1, y1), (x2, y2) in zip(ours, theirs, strict=True):
                assert np.array_equal(y1, y2) and np.array_equal(x1, x2)


def test_each_worker_reads_its_share_of_every_global_batch():
    import tensorflow as tf

    from cnnctl.data.stream import worker_share

    order = tf.random.shuffle(tf.range(103, dtype=tf.int64), seed=1).numpy()
    shares = [worker_share(tf.constant(order), 20, 3, w).numpy() for w in range(3)]
    local = [6, 7, 7]  # 20 split three ways; the last global batch (3) gives one each
    for k in range(6):
        parts = [
            share[k * size : (k + 1) * size] for share, size in zip(shares, local, strict=True)
        ]
        assert np.array_equal(np.concatenate(parts), order[k * 20 : (k + 1) * 20])


def cut_short(good: Path, to: Path) -> Path:
    """A JPEG whose header reads but whose pixels do not (a copy cut short)."""
    data = good.read_bytes()
    to.write_bytes(data[: data.index(b"\xff\xda") + 20])
    return to


def test_unreadable_files_are_skipped_and_reported_with_paths(runner, write, folder):
    truncated = cut_short(
        next((folder / "train" / "digit_3").glob("*.jpg")), folder / "train" / "digit_3" / "t.jpg"
    )
    in_test = cut_short(
        next((folder / "test" / "digit_5").glob("*.jpg")), folder / "test" / "digit_5" / "t.jpg"
    )
    (folder / "train" / "digit_4" / "text.png").write_text("not an image")
    config = config_for(write, folder, "  cache: none\n  validation: test\n")
    result = runner.invoke(main, ["train", str(config), "--json"])
    assert result.exit_code == 0, result.output
    run = Path(json.loads(result.stdout)["run"])
    for line in (
        f"epoch 1: skipped 1 training images that could not be decoded (first: {truncated}:",
        f"epoch 2: skipped 1 validation images that could not be decoded (first: {in_test}:",
        f"skipped 1 test images that could not be decoded (first: {in_test}:",
    ):
        assert line in result.stderr
    rows = list(csv.DictReader(open(run / "skipped.csv")))
    assert {(r["epoch"], r["split"], r["path"]) for r in rows} == {
        ("", "", str(folder / "train" / "digit_4" / "text.png")),
        ("1", "training", str(truncated)),
        ("2", "training", str(truncated)),
        ("1", "validation", str(in_test)),
        ("2", "validation", str(in_test)),
        ("", "test", str(in_test)),
    }
    # evaluate leaves it out of every figure (not only the weighted metrics) and names it
    result = runner.invoke(main, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["path"] for s in report["skipped"]] == [str(in_test)]
    assert report["examples"] == 300 == sum(map(sum, report["confusion_matrix"]))
    assert f"warning: 1 images could not be decoded and are left out (first: {in_test}:" in (
        result.stderr
    )
    # so do export's check images; code that would take a blank image for it gets an error
    result = runner.invoke(main, ["export", str(run), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["check"]["images"] == 300
    x_test = load_dataset(DataConfig(path=str(folder), cache="none"), (28, 28, 1), seed=0).x_test
    with pytest.raises(DataError, match=f"{in_test}: damaged or truncated image"):
        np.asarray(x_test)


def test_a_changed_file_invalidates_the_cache(folder, cache_dir, mnist_test_set):
    data = DataConfig(path=str(folder), cache="disk")
    first = load_dataset(data, (28, 28, 1), seed=5)
    assert (
        "decode cache written to" in first.warnings[0]
        and "delete it any time: rm -r" in first.warnings[0]
    )
    assert "decode cache read from" in load_dataset(data, (28, 28, 1), seed=5).warnings[0]
    changed = Path(first.files["test"][0])
    Image.fromarray(255 - mnist_test_set[0][0]).save(
        changed, format="PNG" if changed.suffix == ".png" else "JPEG"
    )
    second = load_dataset(data, (28, 28, 1), seed=5)
    assert "decode cache written to" in second.warnings[0]
    assert len(list(cache_dir.glob("decoded-*"))) == 2
    assert not np.array_equal(np.asarray(first.x_test[:1]), np.asarray(second.x_test[:1]))


@pytest.mark.parametrize("damage", ["truncated", "bad-meta", "fifo"])
def test_a_damaged_cache_is_set_aside_and_rebuilt(folder, cache_dir, damage):
    data = DataConfig(path=str(folder), cache="disk")
    before = np.asarray(load_dataset(data, (28, 28, 1), seed=5).x_train)
    cached = next(cache_dir.glob("decoded-*"))
    images = cached / "images.npy"
    if damage == "truncated":  # a full disk, or a copy cut short
        os.truncate(images, images.stat().st_size - 100)
    elif damage == "bad-meta":
        (cached / "meta.json").write_text('{"version": 1, "failed": {"99999999": 3}}')
    else:  # reading a FIFO would hang
        images.unlink()
        os.mkfifo(images)
    again = load_dataset(data, (28, 28, 1), seed=5)
    assert "decode cache written to" in again.warnings[0]
    assert np.array_equal(before, np.asarray(again.x_train))
    assert [p.name for p in cache_dir.glob("*decoded-*")] == [cached.name]  # nothing left aside


def test_a_cache_cut_short_while_in_use_skips_the_missing_rows(folder, cache_dir):
    """The cache is memory-mapped: reading past the end of a shortened file would kill us."""
    dataset = load_dataset(DataConfig(path=str(folder), cache="disk"), (28, 28, 1), seed=5)
    x = dataset.x_train
    batches = eval_batches(x, dataset.y_train, batch_size=100, num_classes=10, one_hot=False)
    rows_in_file, row = len(np.load(x.store, mmap_mode="r")), 28 * 28
    kept = 500  # rows left in the file, the last one cut in half
    os.truncate(x.store, x.store.stat().st_size - (rows_in_file - kept) * row - row // 2)
    weights = np.concatenate([b[2].numpy() for b in batches])  # the file is mapped already
    lost = np.flatnonzero(x.rows >= kept - 1)
    assert len(weights) == len(x) and 0 < len(lost) < len(x)
    assert np.array_equal(np.flatnonzero(weights == 0), lost)
    assert x.skips["eval"] == set(lost.tolist())
    assert "decode cache was cut short while in use; delete it: rm -r" in x.reason(int(lost[-1]))


def test_header_checks_are_remembered_until_a_file_changes(folder, cache_dir, monkeypatch):
    from cnnctl.data import index

    first = index.index_folder(folder)
    (memo,) = cache_dir.glob("probes-*.json")
    written = memo.stat().st_ino
    real, calls = index.probe, []
    monkeypatch.setattr(index, "probe", lambda path: calls.append(path) or real(path))
    again = index.index_folder(folder)
    assert calls == []  # only stat: no header read
    assert memo.stat().st_ino == written  # nothing new: the memo is not written again
    assert again.paths.tolist() == first.paths.tolist() and again.skipped == first.skipped
    changed = Path(first.paths[0])
    changed.write_text("not an image any more")
    third = index.index_folder(folder)
    assert calls == [str(changed)]
    assert (str(changed), "not an image file Pillow can read") in third.skipped


def _remove_deep(top: Path) -> None:
    """rmtree and os.walk recurse, so pytest could not clean a tree this deep: go down, then up."""
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for folder in reversed(chain):
        for entry in os.scandir(folder):
            if not entry.is_dir():
                os.unlink(entry.path)
        os.rmdir(folder)


def test_deep_folders_and_names_that_are_not_utf8_stream(tmp_path, mnist_test_set, request):
    from cnnctl.data.index import index_folder
    from cnnctl.data.stream import FileImages, decode_all

    x = mnist_test_set[0]
    root = tmp_path / "photos"
    deep = root / "zero"
    deep.mkdir(parents=True)
    for _ in range(1100):  # deeper than Python's recursion limit (mkdir -p itself recurses)
        deep = deep / "d"
        deep.mkdir()
    request.addfinalizer(lambda: _remove_deep(root / "zero"))
    Image.fromarray(x[0]).save(deep / "0.png")
    (root / "one").mkdir()
    odd = os.fsdecode(os.fsencode(root / "one") + b"/caf\xe9.png")  # Latin-1, not UTF-8
    Image.fromarray(x[1]).save(odd)
    cmyk = os.fsdecode(os.fsencode(root / "one") + b"/\xff.jpg")  # CMYK: Pillow decodes it
    Image.fromarray(x[2]).convert("CMYK").save(cmyk)
    index = index_folder(root)
    assert sorted(index.paths) == sorted([str(deep / "0.png"), odd, cmyk])
    assert index.pillow.tolist() == [path == cmyk for path in index.paths]
    pixels, failed = decode_all(FileImages(index.paths, index.pillow, (28, 28, 1)))
    assert failed == []
    by_name = dict(zip(index.paths, pixels, strict=True))
    assert np.array_equal(by_name[str(deep / "0.png")][..., 0], x[0])
    assert np.array_equal(by_name[odd][..., 0], x[1])
    assert np.abs(by_name[cmyk][..., 0].astype(int) - x[2]).mean() < 8


BUILD = """
import hashlib, sys, numpy as np
from cnnctl.config import DataConfig
from cnnctl.data.dataset import load_dataset
d = load_dataset(DataConfig(path=sys.argv[1], cache="disk"), (28, 28, 1), seed=5)
print(hashlib.sha256(np.asarray(d.x_train).tobytes() + np.asarray(d.x_test).tobytes()).hexdigest())
"""


def test_two_processes_building_one_cache_both_succeed(folder, cache_dir):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD, str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith("probes-")] == [
        next(cache_dir.glob("decoded-*")).name
    ]  # no leftovers


def test_datasets_check_hashes_files_of_a_streamed_folder(runner, write, folder):
    duplicate = next((folder / "test" / "digit_2").glob("*"))
    (folder / "train" / "digit_2" / f"copy{duplicate.suffix}").write_bytes(duplicate.read_bytes())
    result = runner.invoke(
        main, ["datasets", "check", str(config_for(write, folder, "  cache: none\n")), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duplicates"] == {"train/test": 1}


def test_csv_of_paths_reads_like_a_folder(runner, write, folder, tmp_path):
    lines = ["path,label,split"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name},{p.parent.parent.name}"
        for p in sorted(folder.rglob("*.*"))
    ]
    (tmp_path / "files.csv").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(DataConfig(path="files.csv", cache="none"), (28, 28, 1), seed=5)
    from_folder = load_dataset(DataConfig(path=str(folder), cache="none"), (28, 28, 1), seed=5)
    assert dataset.class_names == from_folder.class_names and np.array_equal(
        dataset.y_test, from_folder.y_test
    )
    assert len(dataset.x_train) == len(from_folder.x_train)


@pytest.mark.slow  # the in-memory SIGKILL test runs by default
def test_sigkill_mid_epoch_while_streaming_then_resume_gives_the_planned_epochs(write, folder):
    from test_interrupt import epochs_in, wait_for_epochs

    config = config_for(write, folder, "  cache: none\n")
    run = Path("runs/small")
    process = subprocess.Popen(
        [*CNNCTL, "train", str(config), "--set", "train.epochs=4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_epochs(process, run, 1)
    seconds = float(list(csv.DictReader(open(run / "metrics.csv")))[-1]["seconds"])
    time.sleep(seconds / 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = epochs_in(run)
    assert done_before in ([1], [1, 2])
    done = subprocess.run(
        [*CNNCTL, "train", "--resume"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert epochs_in(run) == [1, 2, 3, 4]


TF_ROUTED = [
    ("JPEG", "L"),
    ("JPEG", "RGB"),
    ("PNG", "L"),
    ("PNG", "LA"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("GIF", "P"),
    ("GIF", "L"),
    ("BMP", "L"),
    ("BMP", "RGB"),
]


@pytest.mark.parametrize("channels", [1, 3])
def test_tensorflow_decodes_as_pillow_reads(tmp_path, mnist_test_set, channels):
    """Training's decoder (TensorFlow) and predict's fallback (Pillow) see the same pixels."""
    from cnnctl.data.images import load_image
    from cnnctl.data.index import probe
    from cnnctl.data.stream import FileImages, decode_all

    digits = mnist_test_set[0][:4]
    color = np.stack([digits[0], digits[1], 255 - digits[2], digits[3]], axis=-1)  # RGBA
    paths = []
    for fmt, mode in TF_ROUTED:
        paths.append(str(tmp_path / f"{mode}.{fmt.lower()}"))
        Image.fromarray(color, "RGBA").convert(mode).save(paths[-1], fmt)
    assert [probe(p) for p in paths] == [False] * len(paths)  # all on TensorFlow's route
    pixels, failed = decode_all(FileImages(paths, np.zeros(len(paths), bool), (28, 28, channels)))
    assert failed == []
    for path, image in zip(paths, pixels, strict=True):
        expected = load_image(Path(path), 28, 28, channels)
        off = np.abs(image.astype(int) - expected.astype(int))
        if path.endswith(".jpeg"):  # two builds of libjpeg: a level apart on average
            assert off.max() <= 8 and off.mean() < 1, f"{path}: {off.max()}, {off.mean()}"
        else:  # lossless: the same pixels; grey only rounds its weights differently
            assert off.max() <= (1 if channels == 1 else 0), f"{path}: off by {off.max()}"
