"""Hostile data (issue 25, 7-12, 17): label CSVs, escaped names, the decode cache, large images.

The cache folder ($CNNCTL_CACHE_DIR) may be shared between users, so anything in it may be
planted: a symlink at a temporary name, a memo vouching for a huge image, a hand-made meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import hostile_models as hm
from conftest import REPO


def _png(path: Path, width: int, height: int, grey: bool = True) -> Path:
    """A whole, valid PNG of zeros (a few hundred KB even at 100 megapixels)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    channels, color = (1, 0) if grey else (4, 6)
    compressor, rows = zlib.compressobj(9), b"\0" * (1 + width * channels)
    body = b"".join(compressor.compress(rows) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def _memo_path(origin: Path) -> Path:
    name = hashlib.blake2b(os.path.abspath(origin).encode(), digest_size=8).hexdigest()
    return Path(os.environ["CNNCTL_CACHE_DIR"]) / f"probes-{name}.json"


def _folder(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 9, np.uint8)).save(root / label / "x.png")
    return root


def test_a_symlink_at_the_memos_old_temporary_name_is_not_followed(tmp_path):
    from cnnctl.data.cache import remembered_probes

    data = _folder(tmp_path / "data")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    memo = _memo_path(data)
    memo.parent.mkdir(parents=True, exist_ok=True)
    (memo.parent / f".{memo.name}.tmp-{os.getpid()}").symlink_to(victim)
    paths = [str(p) for p in sorted(data.rglob("*.png"))]
    assert remembered_probes(paths, str(data), lambda p: False, "s") == [False, False]
    assert victim.read_text() == "keep me"
    assert memo.is_file() and not memo.is_symlink()
    assert json.loads(memo.read_text())["files"][paths[0]][2] is False
    assert [p.name for p in memo.parent.iterdir() if ".tmp" in p.name] == [
        f".{memo.name}.tmp-{os.getpid()}"
    ]


def test_a_planted_memo_never_lets_a_huge_image_be_decoded(tmp_path):
    """The memo says a 100-megapixel PNG is fine for TensorFlow; the decoder checks anyway."""
    data = _folder(tmp_path / "data")
    big = _png(data / "a" / "big.png", 10_000, 10_000)
    info = big.stat()
    from cnnctl.limits import limit

    settings = f"pixels<={limit('pixels')},bytes<={limit('image_bytes')}"
    memo = _memo_path(data)
    memo.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    files = {p: [os.stat(p).st_size, os.stat(p).st_mtime_ns, False] for p in paths}
    files[str(big)] = [info.st_size, info.st_mtime_ns, False]
    memo.write_text(json.dumps({"version": 1, "settings": settings, "files": files}))
    code = f"""
import json, sys
from pathlib import Path
from cnnctl.data.index import index_folder
from cnnctl.data.stream import FileImages, decode_all
import tensorflow
with open("/proc/self/status") as s:
    start = next(int(l.split()[1]) for l in s if l.startswith("VmHWM:")) / 1024
index = index_folder(Path({str(data)!r}))
x = FileImages(index.paths, index.pillow, (28, 28, 1))
_, failed = decode_all(x)
with open("/proc/self/status") as s:
    peak = next(int(l.split()[1]) for l in s if l.startswith("VmHWM:")) / 1024
print(json.dumps({{"failed": [str(x.paths[i]) for i in failed],
                  "reason": [x.reason(i) for i in failed], "growth": peak - start}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == [str(big)]
    assert "more than 64,000,000 pixels" in result["reason"][0]
    assert result["growth"] < 600, result  # TensorFlow decoding it took 2.4 GB


def test_rows_of_a_cache_cut_short_while_read_are_skipped_not_fatal(tmp_path):
    """Read with pread, not a memory map: a file cut short gives blanks of weight 0, no SIGBUS."""
    import tensorflow as tf

    from cnnctl.data.stream import FileImages, _from_store

    store = tmp_path / "images.npy"
    with open(store, "wb") as stream:
        header = {"descr": "|u1", "fortran_order": False, "shape": (8, 4, 4, 1)}
        np.lib.format.write_array_header_1_0(stream, header)
        stream.write(np.arange(8 * 16, dtype=np.uint8).tobytes())
    x = FileImages([f"f{i}" for i in range(8)], [False] * 8, (4, 4, 1), store=store)
    x.mapped()  # opened first, as a run does; then another process cuts the file short
    os.truncate(store, store.stat().st_size - 3 * 16)
    batches = _from_store(x, tf.range(8, dtype=tf.int64), tf.zeros(8, tf.int64), 8)
    _, images, _, weights = next(iter(batches.as_numpy_iterator()))
    assert weights.tolist() == [1.0] * 5 + [0.0] * 3
    assert images[4].ravel().tolist() == list(range(64, 80)) and not images[5:].any()


def test_a_planted_cache_meta_and_symlink_leave_no_trace(tmp_path):
    from cnnctl.data.cache import _whole, cache_key, cache_root, cached_images
    from cnnctl.data.index import index_folder

    index = index_folder(_folder(tmp_path / "data"))
    folder = cache_root() / f"decoded-{cache_key(index, (28, 28, 1))}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "meta.json").write_text("{}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(elsewhere)  # damaged: no images.npy
    path, failed, _ = cached_images(index, (28, 28, 1))
    assert failed == {} and path.parent == folder and folder.is_dir() and not folder.is_symlink()
    assert sorted(p.name for p in cache_root().iterdir() if "damaged" in p.name) == []
    assert (elsewhere / "meta.json").read_text() == "{}"
    meta = json.loads((folder / "meta.json").read_text())
    meta["failed"] = {"0": "\x1b]0;pwned\x07\x1b[2J"}
    (folder / "meta.json").write_text(json.dumps(meta))
    assert _whole(folder, 2, (28, 28, 1)) == {0: "\\x1b]0;pwned\\x07\\x1b[2J"}


def test_one_images_decoded_bytes_are_bounded(runner, tmp_path):
    """200 megapixels of 8-bit RGBA: refused by image_bytes, even with the pixel limit raised."""
    import keras

    from cnnctl.cli import main

    layers = [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    keras.Sequential(layers).save(tmp_path / "m.keras")
    wide = _png(tmp_path / "wide.png", 20_000, 10_000, grey=False)
    model = str(tmp_path / "m.keras")
    result = runner.invoke(main, ["--limit", "pixels=3e8", "predict", str(wide), "--model", model])
    assert "decodes to 800,000,000 bytes" in result.output, result.output
    assert "--limit image_bytes=800000000" in result.output
    assert result.exit_code in (0, 2) and "internal error" not in result.output
    hm.png_header_bomb(tmp_path / "grey16.png", width=20_000, height=10_000, depth=16)
    result = runner.invoke(
        main,
        [
            "--limit",
            "pixels=300000000",
            "predict",
            str(tmp_path / "grey16.png"),
            "--model",
            str(tmp_path / "m.keras"),
        ],
    )
    assert "decodes to 400,000,000 bytes" in result.output, result.output


def _path_csv(folder: Path, rows: str) -> Path:
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "x.png")
    (folder / "images.csv").write_text("path,label\n" + rows)
    return folder / "images.csv"


def test_a_csv_cell_over_the_field_limit_is_one_line(tmp_path):
    from cnnctl.data.index import index_csv
    from cnnctl.errors import DataError

    csv_file = _path_csv(tmp_path, "x.png,a\n" + "x" * (200_000) + ",b\n")
    with pytest.raises(DataError, match=r"images.csv:3: not a CSV of paths and labels \(field"):
        index_csv(csv_file, "label")


def test_many_rows_are_bounded_and_one_file_twice_refused_before_any_probe(tmp_path, monkeypatch):
    import time

    from cnnctl.data import index
    from cnnctl.errors import DataError

    rows = "".join(f"x{i}.png,a\n" for i in range(200_000))
    csv_file = _path_csv(tmp_path, rows + "x0.png,b\n")
    seen = []
    monkeypatch.setattr(index, "probe", lambda path: seen.append(path) or False)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"images.csv:200002: image 'x0.png' is listed twice"):
        index.index_csv(csv_file, "label")
    assert seen == [] and time.monotonic() - start < 10
    monkeypatch.setenv("CNNCTL_LIMITS", "csv_rows=1000")
    with pytest.raises(DataError, match=r"too many rows \(1,001 > limit 1,000\)"):
        index.index_csv(csv_file, "label")


def test_names_with_escape_sequences_reach_no_terminal_raw(runner, tmp_path):
    """The skip warning train prints, and class names in predict --format csv."""
    import keras

    from cnnctl.cli import main
    from cnnctl.data.checks import check_dataset
    from cnnctl.escape import csv_cell

    assert csv_cell("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert csv_cell("=1+1") == "'=1+1"
    images = np.arange(2, dtype=np.uint8).reshape(2, 1, 1, 1)
    dataset = SimpleNamespace(
        class_names=["a", "b"],
        skipped=(("bad\x1b[31m.png", "damaged\x1b]0;x\x07"),),
        warnings=[],
        origin="o",
        split=lambda split: (images, np.array([0, 1])),
        x_val=images,
        x_test=images,
    )
    text = " ".join(check_dataset(dataset).warnings)
    assert "\x1b" not in text and "bad\\x1b[31m.png" in text
    layers = [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    folder = tmp_path / "m"
    folder.mkdir()
    keras.Sequential(layers).save(folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps(["\x1b]0;pwned\x07", "b"]))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    args = ["predict", str(tmp_path / "x.png"), "--model", str(folder / "model.keras")]
    result = runner.invoke(main, [*args, "--top-k", "2", "--format", "csv"])
    assert result.exit_code == 0 and "\\x1b]0;pwned\\x07" in result.stdout
    assert "\x1b" not in result.output
