"""cnnctl serve for every task: a multilabel, a regression and a segmentation run, each served by
a real server on 127.0.0.1, answer what `cnnctl predict --format json` prints for the same scene
PNGs; segmentation's coloured overlay comes back on request, equal to predict's overlay file."""

from __future__ import annotations

import base64
import concurrent.futures
import csv
import io
import json
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_serve import EVIL, Server, browser, predict_json, upload  # noqa: F401 (a fixture)

from cnnctl.cli import main

pytestmark = pytest.mark.slow  # three tiny runs and three servers: CI runs them

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
    """task -> (runs folder, server): a one-epoch run of each task, served. Each server starts
    on a thread while the next task trains (a server's start is mostly imports and warm-up)."""
    starting: dict[str, tuple[Path, concurrent.futures.Future]] = {}
    with concurrent.futures.ThreadPoolExecutor(len(LAYERS)) as pool:
        for task in LAYERS:
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
            if task == "segmentation":  # class names the page must show as text, not HTML
                names = [f"{EVIL}{i}" for i in range(11)]
                (runs / task / "classes.json").write_text(json.dumps(names))
            starting[task] = runs, pool.submit(Server, ["--runs-dir", str(runs)], root)
        made = {task: (runs, future.result()) for task, (runs, future) in starting.items()}
    yield made
    for _, server in made.values():  # all drain at once
        server.process.send_signal(signal.SIGTERM)
    for _, server in made.values():  # one SIGTERM each: a second one may cut the exit short
        assert server.process.wait(timeout=60) == 0, server.stderr


@pytest.fixture(params=["multilabel", "regression", "segmentation"])
def served(request, serving):
    """(task, runs folder, server) for each task but classification (tests/test_serve.py's)."""
    return request.param, *serving[request.param]


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
    runs, server = serving["segmentation"]
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


@pytest.mark.parametrize("task", ["multilabel", "regression", "segmentation"])
def test_explain_draws_what_cnnctl_explain_draws(task, serving, scene_pngs, tmp_path):
    runs, server = serving[task]
    assert httpx.get(f"{server.url}/v1/model").json()["explain"] is True
    response = upload(server.url, scene_pngs[:1], path="/v1/explain")
    assert response.status_code == 200, response.text
    row = response.json()
    command = ["explain", "--runs-dir", str(runs), "--output", str(tmp_path), "--json"]
    result = CliRunner().invoke(main, [*command, str(scene_pngs[0])])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)[0]
    written = Path(expected.pop("files")[0])
    assert {k: v for k, v in row.items() if k != "overlay"} == {**expected, "path": "00000.png"}
    drawn = Image.open(io.BytesIO(base64.b64decode(row["overlay"].split(",", 1)[1])))
    saved = np.asarray(Image.open(written), np.int16)
    assert drawn.size == Image.open(written).size
    # the title differs only in the path shown; the maps agree to a shade
    assert np.abs(np.asarray(drawn, np.int16)[30:] - saved[30:]).max() <= 2
    two = upload(server.url, scene_pngs[:2], path="/v1/explain")
    assert (two.status_code, two.json()) == (
        422,
        {"error": "2 images: explain takes one a request"},
    )


def test_the_page_shows_segmentation_overlays_grad_cam_and_class_names_as_text(
    browser,  # noqa: F811 (test_serve's fixture)
    serving,
    scene_pngs,
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    runs, server = serving["segmentation"]
    expected = predict_json(runs, scene_pngs[:1])[0]["top"]
    assert expected[0]["label"].startswith(EVIL)
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "segmentation model" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys(str(scene_pngs[0]))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card img.overlay"))
    card = browser.find_element(By.CSS_SELECTOR, "#results .card")
    labels = [label.text for label in card.find_elements(By.CSS_SELECTOR, ".label")]
    assert labels == [guess["label"] for guess in expected]
    tinted = card.find_element(By.CSS_SELECTOR, "img.overlay")
    assert tinted.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", tinted) == 64)
    assert len(card.find_elements(By.TAG_NAME, "img")) == 2  # preview, overlay; none injected
    card.find_element(By.CSS_SELECTOR, "button.explain").click()  # the model is Keras: Grad-CAM
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results figure.gradcam img"))
    figure = browser.find_element(By.CSS_SELECTOR, "#results figure.gradcam")
    drawn = figure.find_element(By.TAG_NAME, "img")
    assert drawn.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", drawn) > 64)
    caption = figure.find_element(By.TAG_NAME, "figcaption").text
    assert caption.startswith(f"gradcam of {EVIL}")  # the class name, as text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 3
    assert browser.title == "cnnctl serve"  # no onerror ran


def test_a_bare_copy_of_a_segmentation_export_serves_masks(serving, scene_pngs, tmp_path):
    """The review's finding: serve --model lonely.onnx started as a classifier of 11 outputs and
    answered 500 in plain text. The record inside the file makes it a segmentation server that
    answers what the file answers with its export.json beside it."""
    from bare_copies import copies

    runs, _ = serving["segmentation"]
    done = CliRunner().invoke(
        main, ["export", "segmentation", "--runs-dir", str(runs), "--format", "onnx"]
    )
    assert done.exit_code == 0, done.output
    beside, bare = copies(runs / "segmentation" / "export" / "model.onnx", tmp_path)
    servers = [Server(["--model", str(m)], tmp_path) for m in (beside, bare)]
    try:
        answers = [upload(s.url, scene_pngs) for s in servers]
        assert [a.status_code for a in answers] == [200, 200], answers[1].text
        assert answers[1].json() == answers[0].json()
        assert "task segmentation, 11 outputs" in servers[1].stderr
        assert "warning" not in servers[1].stderr
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=60)
