"""cnnctl serve for every task: a multilabel, a regression and a segmentation run, each served by
a real server on 127.0.0.1, answer what `cnnctl predict --format json` prints for the same scene
PNGs; segmentation's coloured overlay comes back on request, equal to predict's overlay file."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_serve import Server, predict_json, upload

from cnnctl.cli import main

LAYERS = {
    "multilabel": """\
    - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
    - {type: MaxPooling2D, pool_size: 4}
    - Flatten
    - {type: Dense, units: 10, activation: sigmoid}
""",
    "regression": """\
    - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
    - {type: MaxPooling2D, pool_size: 4}
    - Flatten
    - {type: Dense, units: 1}
""",
    "segmentation": """\
    - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}
    - type: Skip
      layers:
        - MaxPooling2D
        - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}
        - {type: UpSampling2D, size: 2}
    - {type: Conv2D, filters: 11, kernel_size: 1, activation: softmax}
""",
}
DATA = {"multilabel": "  label_column: tags\n", "regression": "  label_column: count\n"}


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    """The same paths, labels and order; each number within one unit of the sixth decimal
    that predict prints: serve runs the model as one traced graph, predict of a few files calls
    it eagerly, and the two differ in the last bits of a float32 (0.348916 against 0.348917)."""
    assert [(r["path"], [(g["label"], g["index"]) for g in r["top"]]) for r in got] == [
        (r["path"], [(g["label"], g["index"]) for g in r["top"]]) for r in expected
    ]
    for row, want in zip(got, expected, strict=True):
        numbers = [g["probability"] for g in row["top"]]
        assert numbers == pytest.approx([g["probability"] for g in want["top"]], abs=1.01e-6)


def _config(task: str, scenes_csv: Path) -> str:
    path = scenes_csv.parent if task == "segmentation" else scenes_csv
    return (
        f"name: {task}\ntask: {task}\ndata:\n  path: {path}\n{DATA.get(task, '')}"
        f"  validation: 0.2\nmodel:\n  input_shape: [64, 64, 1]\n  layers:\n{LAYERS[task]}"
        "train:\n  epochs: 1\n  batch_size: 32\n"
    )


@pytest.fixture(scope="module")
def scene_pngs(scenes_csv) -> list[Path]:
    """Three of the held-out scenes, as PNG files."""
    rows = [r for r in csv.DictReader(open(scenes_csv)) if r["split"] == "test"]
    return [scenes_csv.parent / row["path"] for row in rows[:3]]


@pytest.fixture(scope="module")
def serving(tmp_path_factory, scenes_csv):
    """task -> (runs folder, server): a one-epoch run of the task, served; each made once."""
    made: dict[str, tuple[Path, Server]] = {}

    def serve(task: str) -> tuple[Path, Server]:
        if task not in made:
            root = tmp_path_factory.mktemp(task)
            (root / f"{task}.yaml").write_text(_config(task, scenes_csv))
            runs = root / "runs"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("CNNCTL_CACHE_DIR", str(root / "cache"))
                patch.setenv("CNNCTL_OFFLINE", "1")
                patch.chdir(root)
                result = CliRunner().invoke(
                    main, ["train", f"{task}.yaml", "--runs-dir", str(runs)]
                )
            assert result.exit_code == 0, result.output
            made[task] = runs, Server(["--runs-dir", str(runs)], root)
        return made[task]

    yield serve
    for _, server in made.values():
        assert server.stop() == 0, server.stderr


@pytest.fixture(params=["multilabel", "regression", "segmentation"])
def served(request, serving):
    """(task, runs folder, server) for each task but classification (tests/test_serve.py's)."""
    return request.param, *serving(request.param)


def test_every_task_answers_what_predict_prints(served, scene_pngs):
    task, runs, server = served
    response = upload(server.url, scene_pngs)
    assert response.status_code == 200, response.text
    expected = predict_json(runs, scene_pngs)
    assert_same_rows(response.json(), expected)
    assert all("overlay" not in row for row in expected)
    if task == "multilabel":  # the labels above their thresholds, as predict gives by default
        four = upload(server.url, scene_pngs, top_k=4).json()
        assert_same_rows(four, predict_json(runs, scene_pngs, "--top-k", "4"))
        assert all(len(row["top"]) == 4 for row in four)
    if task == "regression":
        assert [row["top"][0]["label"] for row in expected] == ["count"] * 3
    if task == "segmentation":  # every class present, by its share of the pixels
        for row in expected:
            assert sum(guess["probability"] for guess in row["top"]) == pytest.approx(1, abs=1e-4)
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["task"] == task
    assert model["input_shape"] == [None, 64, 64, 1]
    assert f"task {task}" in server.stderr


def test_segmentation_overlay_on_request_is_predicts_overlay_file(serving, scene_pngs, tmp_path):
    runs, server = serving("segmentation")
    response = upload(server.url, scene_pngs, overlay=1)
    assert response.status_code == 200, response.text
    rows = response.json()
    plain = [{k: v for k, v in row.items() if k != "overlay"} for row in rows]
    assert_same_rows(plain, predict_json(runs, scene_pngs))
    command = ["predict", "--runs-dir", str(runs), "--output", str(tmp_path), *map(str, scene_pngs)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    for row, png in zip(rows, scene_pngs, strict=True):
        assert row["overlay"].startswith("data:image/png;base64,")
        served_png = Image.open(io.BytesIO(base64.b64decode(row["overlay"].split(",", 1)[1])))
        written = Image.open(tmp_path / f"{png.stem}.overlay.png")
        assert served_png.size == written.size == (64, 64)
        assert np.array_equal(np.asarray(served_png), np.asarray(written))
