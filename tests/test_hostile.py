"""Hostile files stay harmless (issue 18): bounded memory, disk and time, the run folder a boundary.

Each group runs its cases in one fresh child process (`python -c DRIVER`, the CLI invoked
in-process there, one case after another), so that the child's peak RSS is its own
(VmHWM), a hang is caught by a deadline, and TMPDIR is the child's own folder.
`os.wait4`'s ru_maxrss would not do: a child started by fork and exec inherits its
parent's peak, so after a large test in this pytest process a tiny child read 1.6 GB.
Every case must end with exit code 0 or 2 (never 1, never a traceback) within 30 s; the
group's child must stay under 1.5 GB, leave TMPDIR empty and touch nothing outside.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main

import hostile_models as hm
from conftest import REPO, SMALL

MAX_RSS_MB = 1536
CASE_SECONDS = 30
DRIVER = r"""
import json, sys, time
from click.testing import CliRunner
from cnnctl.cli import main
def peak_rss_mb():  # this process's own peak, not one inherited across fork and exec
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
results = []
for args in json.loads(sys.argv[1]):
    start = time.time()
    r = CliRunner().invoke(main, args)
    crash = (
        None
        if r.exception is None or isinstance(r.exception, SystemExit)
        else repr(r.exception)
    )
    results.append({"args": args, "code": r.exit_code, "seconds": time.time() - start,
                    "stderr": r.stderr[-3000:], "stdout": r.stdout[-3000:], "crash": crash,
                    "rss_mb": peak_rss_mb()})
    print("RESULT " + json.dumps(results[-1]), flush=True)
"""


def run_group(cases: list[list[str]], cwd: Path) -> tuple[list[dict], float]:
    """Run CLI cases in one child process: (results, the child's peak RSS in MB)."""
    tmp = cwd / "child-tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PYTHONPATH": str(REPO),
        "CNNCTL_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("CNNCTL_LIMITS", None)
    with open(cwd / "child.out", "wb") as out, open(cwd / "child.err", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(cases)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
        )
        done, deadline = 0, time.monotonic() + 60 + CASE_SECONDS  # start-up, then per case
        while True:
            pid, status, _ = os.wait4(child.pid, os.WNOHANG)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                break
            finished = (cwd / "child.out").read_text().count("RESULT ")
            if finished > done:
                done, deadline = finished, time.monotonic() + CASE_SECONDS + 5
            rss = _rss_mb(child.pid)
            if rss > 2 * MAX_RSS_MB:  # a case running away: stop it before it fills the machine
                child.kill()
                os.wait4(child.pid, 0)
                done = (cwd / "child.out").read_text().count("RESULT ")
                pytest.fail(
                    f"memory: case {cases[done] if done < len(cases) else '?'} passed "
                    f"{rss:.0f} MB RSS (killed)"
                )
            if time.monotonic() > deadline:
                child.kill()
                os.wait4(child.pid, 0)
                child.returncode = -9
                done = (cwd / "child.out").read_text().count("RESULT ")
                pytest.fail(
                    f"hang: case {cases[done] if done < len(cases) else '?'} did not finish"
                )
            time.sleep(0.05)
    lines = (cwd / "child.out").read_text().splitlines()
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    assert len(results) == len(cases), (cwd / "child.err").read_text()[-3000:]
    assert list(tmp.iterdir()) == [], f"left in TMPDIR: {list(tmp.iterdir())}"
    return results, max(r["rss_mb"] for r in results)


def _rss_mb(pid: int) -> float:
    """A running child's resident memory now, in MB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def check(results: list[dict], expected: list[tuple[int, str]], rss_mb: float) -> None:
    """Every case: the expected exit code (0 or 2) and phrase, in time, no crash, no traceback."""
    for result, (code, phrase) in zip(results, expected, strict=True):
        where = f"{result['args']}: {result['stderr'][-600:]}"
        assert result["crash"] is None, where
        assert result["code"] in (0, 2), where
        assert result["code"] == code, where
        assert phrase in result["stderr"] + result["stdout"], where
        assert "Traceback" not in result["stderr"] + result["stdout"], where
        assert "internal error" not in result["stderr"], where
        assert result["seconds"] < CASE_SECONDS, where
    growth = [(round(r["rss_mb"]), r["args"]) for r in results]
    assert rss_mb <= MAX_RSS_MB, f"child peak RSS {rss_mb:.0f} MB; after each case: {growth}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A good Sequential and a good functional model, and an image for them."""
    folder = tmp_path_factory.mktemp("models")
    good = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    good.compile("adam", "categorical_crossentropy", ["accuracy"])
    good.save(folder / "good.keras")
    inp = keras.Input((28, 28, 1))
    keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp))).save(
        folder / "functional.keras"
    )
    keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.UpSampling2D(1150),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(10),
        ]
    ).save(folder / "upsample.keras")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "x.png")
    return folder


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder that stands for everything outside the test: it must never change."""
    folder = tmp_path / "outside"
    (folder / "ckpts").mkdir(parents=True)
    (folder / "secret.txt").write_text("data:\n  dataset: sk-live-0123456789\n")
    (folder / "ckpts" / ".last.tmp.keras").write_text("not yours")
    return folder


def test_functional_and_sequential_models_load_in_process(runner, models):
    for name in ("good.keras", "functional.keras"):
        result = runner.invoke(
            main, ["predict", str(models / "x.png"), "--model", str(models / name), "--json"]
        )
        assert result.exit_code == 0, result.output


def test_hostile_models_and_images(tmp_path, models, outside):
    good, image = models / "good.keras", str(models / "x.png")
    made = tmp_path
    hm.rebuild(
        good,
        made / "npz.keras",
        drop=("model.weights.h5",),
        add={"model.weights.npz": hm.npy_bomb()},
    )
    hm.rebuild(good, made / "wide.keras", change=hm.wide_dense)
    hm.rebuild(good, made / "buildcfg.keras", change=hm.huge_build_input)
    hm.rebuild(good, made / "deserialize.keras", change=hm.deserialize_activation)
    hm.rebuild(good, made / "members.keras", add={f"junk/{i}": b"x" * 1024 for i in range(1500)})
    hm.rebuild(
        good, made / "assets.keras", add={"assets/zz": b"file", "assets/zz/x": b"under a file"}
    )
    shutil.copy(good, made / "big.keras")
    hm.patch_central(made / "big.keras", "model.weights.h5", size=0xFFFFFFFF, packed=169_000_000)
    for name, fields in (("encrypted.keras", {"flags": 1}), ("method.keras", {"method": 99})):
        shutil.copy(good, made / name)
        hm.patch_central(made / name, "config.json", **fields)
    with zipfile.ZipFile(good) as archive:
        weights = archive.read("model.weights.h5")
    for seed in range(3):
        hm.rebuild(
            good,
            made / f"flip{seed}.keras",
            drop=("model.weights.h5",),
            add={"model.weights.h5": hm.flip_bytes(weights, seed)},
        )
    legacy = made / "legacy.h5"
    keras.saving.load_model(good).save(legacy)
    import h5py

    with h5py.File(legacy, "a") as h5:
        h5.attrs["model_config"] = np.arange(5)
    os.mkfifo(made / "fifo.png")
    (made / "loop").mkdir()
    shutil.copy(image, made / "loop" / "x.png")
    (made / "loop" / "a").symlink_to(".")
    (made / "loop" / "b").symlink_to(".")
    hm.png_header_bomb(made / "bomb.png")
    before = snapshot(outside)

    def predict(model: str, *extra: str, path: str = image) -> list[str]:
        return [
            "predict",
            path,
            "--model",
            str(made / model if "/" not in model else model),
            *extra,
        ]

    cases = [
        (predict(str(good)), 0, ""),
        (predict(str(models / "functional.keras")), 0, ""),
        (predict("npz.keras"), 2, "(a shape bomb?)"),
        (predict(str(models / "upsample.keras")), 2, "makes too large an output for one image"),
        (predict("wide.keras"), 2, "the model has too many parameters"),
        (predict("buildcfg.keras"), 2, "the model has too many parameters"),
        (predict("big.keras"), 2, "--limit bytes="),
        (predict("members.keras"), 2, "the archive has too many members"),
        (predict("assets.keras"), 0, ""),
        (predict("encrypted.keras"), 2, "is encrypted"),
        (predict("method.keras"), 2, "damaged model file"),
        *((predict(f"flip{seed}.keras"), -1, "") for seed in range(3)),
        (predict("legacy.h5", "--legacy-h5"), 2, "model_config is not text"),
        (predict("deserialize.keras"), 2, "its Dense layer names 'deserialize'"),
        (predict(str(good), path=str(made / "fifo.png")), 2, "not a regular file (a FIFO)"),
        (predict(str(good), path=str(made / "loop" / "**" / "*.png")), 0, ""),
        (predict(str(good), path=str(made / "bomb.png")), 2, "more than 64,000,000 pixels"),
    ]
    results, rss = run_group([args for args, _, _ in cases], tmp_path)
    # a bit-flipped weights file may still load (flips in padding): 0 or 2, never 1
    expected = [
        (r["code"] if code == -1 and r["code"] in (0, 2) else code, phrase)
        for r, (_, code, phrase) in zip(results, cases, strict=True)
    ]
    check(results, expected, rss)
    assert snapshot(outside) == before


def _run_folder(root: Path, name: str, good: Path, state: object = None) -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(SMALL)
    (run / "classes.json").write_text(json.dumps([str(d) for d in range(10)]))
    (run / "run.json").write_text(json.dumps({"status": "finished", "started": 1.0}))
    shutil.copy(good, run / "model.keras")
    shutil.copy(good, run / "checkpoints" / "last.keras")
    if state is not None:
        with zipfile.ZipFile(run / "checkpoints" / "last.keras", "a") as archive:
            archive.writestr(
                "cnnctl_state.json",
                state if isinstance(state, (str, bytes)) else json.dumps(state),
                zipfile.ZIP_DEFLATED,
            )
    return run


def test_hostile_run_folders(tmp_path, models, outside, data_dir):
    good, image = models / "good.keras", str(models / "x.png")
    runs = tmp_path / "runs"
    link = _run_folder(runs, "ckpt-link", good)
    shutil.rmtree(link / "checkpoints")
    (link / "checkpoints").symlink_to(outside / "ckpts")
    leak = _run_folder(runs, "config-link", good)
    (leak / "config.yaml").unlink()
    (leak / "config.yaml").symlink_to(outside / "secret.txt")
    bomb = _run_folder(runs, "alias-bomb", good)
    (bomb / "config.yaml").write_text(
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    (_run_folder(runs, "status-list", good) / "run.json").write_text("[1, 2, 3]")
    (_run_folder(runs, "deep-classes", good) / "classes.json").write_text(
        "[" * 100_000 + "]" * 100_000
    )
    (_run_folder(runs, "few-classes", good) / "classes.json").write_text('["a", "b"]')
    states = {
        "epoch-text": {"epoch": "three"},
        "epoch-huge": {"epoch": 1e308},
        "state-list": [1, 2],
        "state-deep": "[" * 100_000 + "]" * 100_000,
        "state-inflates": b" " * (80 * 2**20) + b"{}",
    }
    for name, state in states.items():
        _run_folder(runs, name, good, state)
    before = snapshot(outside)
    cases = [
        (["train", "--resume", str(link)], 2, "points outside the run folder"),
        (["evaluate", "config-link", "--runs-dir", str(runs)], 2, "points outside the run folder"),
        (["runs", str(runs)], 0, "alias-bomb"),
        (
            ["predict", image, "--run", "deep-classes", "--runs-dir", str(runs)],
            2,
            "nested too deeply",
        ),
        (
            ["predict", image, "--run", "few-classes", "--runs-dir", str(runs)],
            2,
            "2 class names for a model with 10 outputs",
        ),
        *(
            (["train", "--resume", name, "--runs-dir", str(runs)], 2, "cnnctl_state.json")
            for name in states
        ),
    ]
    cases[-1] = (cases[-1][0], 2, "resume state of 83,886,082 bytes is too large")
    results, rss = run_group([args for args, _, _ in cases], tmp_path)
    check(results, [(code, phrase) for _, code, phrase in cases], rss)
    assert all("sk-live" not in r["stderr"] + r["stdout"] for r in results)
    assert snapshot(outside) == before


def test_hostile_configs_and_datasets(tmp_path, outside):
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(
        idx / "train-images-idx3-ubyte.gz", "wb"
    ) as stream:  # declares 6.5 GB, holds 1 KB
        stream.write(
            struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 100_000, 256, 256) + b"\0" * 1024
        )
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / name).write_bytes(b"\0\0\x08\x01\0\0\0\0")
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:
        inner = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            inner, {"descr": "|u1", "fortran_order": False, "shape": (6 * 2**30,)}
        )
        archive.writestr("x_train.npy", inner.getvalue() + b"\0" * 64)
    (tmp_path / "big.npz").write_bytes(npz.getvalue())
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    configs = {
        "nested.yaml": (
            "name: x\ndata: " + "[" * 5000 + "]" * 5000 + "\n",
            "nested more than 64 levels",
        ),
        "digits.yaml": ("name: x\nseed: " + "9" * 100_000 + "\n", "digits.yaml:2:7"),
        "fifo.yaml": (
            SMALL.replace("dataset: mnist", "path: fifo.csv"),
            "not a regular file (a FIFO)",
        ),
        "zero.yaml": (SMALL.replace("dataset: mnist", "path: zero.csv"), "a character device"),
        "idx.yaml": (SMALL.replace("dataset: mnist", "path: idx"), "its header declares"),
        "npz.yaml": (SMALL.replace("dataset: mnist", "path: big.npz"), "a shape bomb"),
    }
    for name, (text, _) in configs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "fifo-config.yaml").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo-config.yaml")
    before = snapshot(outside)
    cases = [(["datasets", "check", name], 2, phrase) for name, (_, phrase) in configs.items()]
    cases.append((["validate", "fifo-config.yaml"], 2, "not a regular file (a FIFO)"))
    results, rss = run_group([args for args, _, _ in cases], tmp_path)
    check(results, [(code, phrase) for _, code, phrase in cases], rss)
    assert snapshot(outside) == before


def test_names_from_files_are_shown_escaped(runner, models, tmp_path):
    from rich.console import Console

    from cnnctl import report

    names = ["\x1b]0;pwned\x07", "[link=file:///etc/passwd]click[/link]", '=HYPERLINK("http://x")']
    from cnnctl.runs.results import Guess, Prediction

    items = [Prediction(f"a\x1b[31m{n}.png", [Guess(name, 0, 0.5)]) for n, name in enumerate(names)]
    screen = Console(file=io.StringIO(), width=200, color_system=None)
    screen.print(report.predictions_table(items))
    text = screen.file.getvalue()
    assert "\x1b" not in text and "\\x1b]0;pwned\\x07" in text and "a\\x1b[31m0.png" in text
    assert "[link=file:///etc/passwd]click[/link]" in text
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(models / "good.keras", folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps([*names, *map(str, range(3, 10))]))
    csv_text = runner.invoke(
        main,
        [
            "predict",
            str(models / "x.png"),
            "--model",
            str(folder / "model.keras"),
            "--top-k",
            "10",
            "--format",
            "csv",
        ],
    ).stdout
    assert "'=HYPERLINK" in csv_text and ",=HYPERLINK" not in csv_text


def test_a_limit_can_be_raised_by_name(runner, models, tmp_path):
    image = hm.png_header_bomb(tmp_path / "wide.png", width=9000, height=8000, depth=8)
    refused = runner.invoke(main, ["predict", str(image), "--model", str(models / "good.keras")])
    assert refused.exit_code == 2 and "--limit pixels=72000000" in refused.stderr
    raised = runner.invoke(
        main,
        [
            "--limit",
            "pixels=72000000",
            "predict",
            str(image),
            "--model",
            str(models / "good.keras"),
        ],
    )
    assert "more than" not in raised.stderr
    unknown = runner.invoke(main, ["--limit", "pixles=1", "predict", str(image)])
    assert unknown.exit_code == 2 and "--limit pixles=1: unknown limit" in unknown.stderr


@pytest.mark.slow
def test_mutated_model_files_never_crash(tmp_path, models):
    """Hundreds of mutants of a .keras and a legacy .h5: truncated, flipped, members swapped."""
    import random

    good = models / "good.keras"
    legacy = tmp_path / "legacy.h5"
    keras.saving.load_model(good).save(legacy)
    rng = random.Random(18)
    mutants = []
    for n in range(300):
        source = legacy if n % 3 == 0 else good
        data = source.read_bytes()
        kind = n % 4
        target = tmp_path / f"m{n}{source.suffix}"
        if kind == 0:
            target.write_bytes(data[: rng.randrange(len(data))])
        elif kind in (1, 2):
            target.write_bytes(hm.flip_bytes(data, n, count=rng.randint(1, 64)))
        elif source.suffix == ".keras":
            with zipfile.ZipFile(good) as archive:
                members = {i.filename: archive.read(i.filename) for i in archive.infolist()}
            names = list(members)
            a, b = rng.sample(names, 2)
            members[a], members[b] = members[b], members[a]
            with zipfile.ZipFile(target, "w") as out:
                for name, body in members.items():
                    out.writestr(name, body)
        else:
            target.write_bytes(hm.flip_bytes(data, n, count=512))
        mutants.append(target)
    image = str(models / "x.png")
    for start in range(0, len(mutants), 100):
        batch = mutants[start : start + 100]
        cases = [
            ["predict", image, "--model", str(m), *(["--legacy-h5"] if m.suffix == ".h5" else [])]
            for m in batch
        ]
        results, rss = run_group(cases, tmp_path)
        check(results, [(r["code"] if r["code"] in (0, 2) else 2, "") for r in results], rss)


def test_weights_are_bounded_by_the_models_own_variables(tmp_path, models):
    """Issue 25, 16: weights inside a .keras are refused by their declared sizes and by the
    shapes of the model's variables (from config.json), before any array is read."""
    good, image = models / "good.keras", str(models / "x.png")
    drop = ("model.weights.h5",)
    # a 1 MB .npz whose one array inflates to 1 GiB of float32 zeros (it was read, then listed)
    hm.rebuild(
        good,
        tmp_path / "inflate.keras",
        drop=drop,
        add={"model.weights.npz": hm.npz_inflating(2**28)},
        stored=True,
    )
    # 12 MB of real data for a model whose largest variable holds 7,840 values
    hm.rebuild(
        good,
        tmp_path / "npzshape.keras",
        drop=drop,
        add={"model.weights.npz": hm.npz_random(3_000_000)},
    )
    hm.rebuild(
        good,
        tmp_path / "h5shape.keras",
        drop=drop,
        add={"model.weights.h5": hm.h5_random(2_000_000)},
    )
    # 400 arrays of 7,840 float64 zeros: each fits the kernel, together 25 MB, far past 7,850 params
    hm.rebuild(
        good, tmp_path / "many.keras", drop=drop, add={"model.weights.npz": hm.npz_many(400, 7_840)}
    )
    cases = [
        (["predict", image, "--model", str(good)], 0, ""),
        (["predict", image, "--model", str(tmp_path / "inflate.keras")], 2, "(a zip bomb?)"),
        (
            ["predict", image, "--model", str(tmp_path / "npzshape.keras")],
            2,
            "larger than any variable of the model",
        ),
        (
            ["predict", image, "--model", str(tmp_path / "h5shape.keras")],
            2,
            "larger than any variable of the model",
        ),
        (
            ["predict", image, "--model", str(tmp_path / "many.keras")],
            2,
            "far more than a model of 7,850 parameters needs",
        ),
    ]
    results, rss = run_group([args for args, _, _ in cases], tmp_path)
    check(results, [(code, phrase) for _, code, phrase in cases], rss)
    for result in results[1:]:
        assert len(result["stderr"].strip().splitlines()) <= 2, result["stderr"]  # message + hint
