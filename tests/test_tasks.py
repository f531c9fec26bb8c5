"""The Task seam: every registered task keeps the contract the rest of cnnctl relies on."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl.config import TASKS, load_config
from cnnctl.errors import ConfigError, DataError
from cnnctl.runs.results import Prediction
from cnnctl.tasks import REGISTRY, Report, Task, task_named, task_of

from conftest import REPO


@pytest.fixture(params=sorted(REGISTRY), ids=sorted(REGISTRY))
def task(request) -> Task:
    return task_named(request.param)


def test_the_registry_is_the_configs_list_of_tasks():
    assert set(REGISTRY) == set(TASKS)
    assert all(issubclass(cls, Task) and cls.name == name for name, cls in REGISTRY.items())


def test_a_config_without_task_is_classification(write):
    config = load_config(REPO / "configs" / "mnist.yaml")
    assert config.task == "classification" and task_of(config).name == "classification"
    assert task_of(None).name == "classification"  # a bare model file


def _labels(task: Task, n: int, seed: int = 0) -> np.ndarray:
    """Labels of `n` examples (3 classes, labels or targets) in the form the task's sources
    give them."""
    rng = np.random.default_rng(seed)
    if task.name == "multilabel":  # multi-hot rows, each with at least one label
        y = (rng.random((n, 3)) < 0.4).astype(np.float32)
        y[np.arange(n), rng.integers(0, 3, n)] = 1.0
        return y
    if task.name == "regression":  # three numbers per image
        return rng.normal(size=(n, 3)).astype(np.float32)
    if task.name == "segmentation":  # a 4x4 mask per image, some pixels ignored (255)
        y = rng.integers(0, 3, (n, 4, 4))
        y[:, 0, 0] = 255
        y[np.arange(n) % 3 == 0, 1, :3] = [0, 1, 2]  # every class seen
        return y
    return rng.integers(0, 3, n)


def _outputs(task: Task, n: int, seed: int = 0) -> np.ndarray:
    """Outputs of a model for `n` examples of 3 classes (labels, targets): per pixel for
    segmentation."""
    rng = np.random.default_rng(seed)
    shape = (n, 4, 4) if task.spatial_output else (n,)
    return rng.dirichlet(np.ones(3), size=shape).astype(np.float32)


def _head(task: Task, outputs: int) -> tuple:
    """The output shape of a network with `outputs` values per example (per pixel of the MNIST
    config's 28x28 input for segmentation)."""
    return (None, 28, 28, outputs) if task.spatial_output else (None, outputs)


# Labels no source of the task may give: out of range or not finite.
BAD_LABELS = {
    "classification": np.array([0.5, -1.0]),
    "multilabel": np.array([[0.5, -1.0]]),
    "regression": np.array([[0.5, np.nan]]),
    "segmentation": np.array([[0.5, -1.0]]),
}


def _head_config(task: Task, write):
    """The MNIST config with its task, the last layer's activation the one the task wants."""
    text = (REPO / "configs" / "mnist.yaml").read_text()
    activation = {"multilabel": "sigmoid", "regression": "linear"}.get(task.name)
    if task.spatial_output:
        text = text.replace("  loss: categorical_crossentropy\n", "")
        return load_config(write("head.yaml", f"task: {task.name}\n{text}"))
    if activation is None:
        return load_config(REPO / "configs" / "mnist.yaml")
    text = text.replace("softmax", activation).replace("  loss: categorical_crossentropy\n", "")
    return load_config(write("head.yaml", f"task: {task.name}\n{text}"))


def test_held_out_is_a_seeded_fraction(task):
    y = task.encode_labels(_labels(task, 300), "x")
    a, b, c = task.held_out(y, 0.2, 1), task.held_out(y, 0.2, 1), task.held_out(y, 0.2, 2)
    assert a.dtype == bool and a.shape == (300,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(a.mean() - 0.2) < 0.05


def test_bad_labels_are_a_data_error_naming_the_source(task):
    with pytest.raises(DataError, match="^labels.csv: "):
        task.encode_labels(BAD_LABELS[task.name], "labels.csv")


def test_output_names_come_from_the_source_or_the_labels(task):
    y = task.encode_labels(_labels(task, 50), "x")
    assert task.output_names(("a", "b", "c"), (y,), "x") == ("a", "b", "c")
    assert len(task.output_names(None, (y,), "x")) == 3


def test_scores_reports_rows_and_parity_from_outputs_alone(task, tmp_path):
    rng = np.random.default_rng(0)
    y = task.encode_labels(_labels(task, 40), "x")
    outputs = _outputs(task, 40)
    names = ["a", "b", "c"]
    metrics = task.score(outputs, y)
    assert task.headline[0] in metrics and all(np.isfinite(v) for v in metrics.values())
    images = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8)
    report = task.report(outputs, y, names, None, images)
    assert isinstance(report, Report) and report.fields
    for stem, draw in report.figures.items():
        draw(tmp_path / f"{stem}.png")
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    row = task.prediction("a.png", outputs[0], names, 2)
    assert isinstance(row, Prediction) and row.path == "a.png"
    same = task.parity(outputs, outputs.copy(), y, tolerance=1e-5)
    off = task.parity(outputs, outputs[::-1].copy(), y, tolerance=1e-5)
    assert same["passed"] and not off["passed"] and task.parity_summary(off)


def test_tta_merge_of_two_equal_views_is_that_view(task):
    outputs = _outputs(task, 4, seed=1)
    assert np.allclose(task.merge_tta(outputs, outputs), outputs)


def test_a_head_of_the_wrong_size_is_named_at_the_last_layer(task, write):
    config = _head_config(task, write)
    with pytest.raises(ConfigError, match=r"\.yaml:\d+:\d+: model.layers\[5\]"):
        task.check_head(_head(task, 10), 3, config)
    task.check_head(_head(task, 10), 10, config)  # the right size passes


@pytest.mark.parametrize("task_name", ["multilabel", "regression"])
def test_a_head_with_the_wrong_activation_is_named_at_the_last_layer(task_name, write):
    text = (
        (REPO / "configs" / "mnist.yaml")
        .read_text()
        .replace("  loss: categorical_crossentropy\n", "")
    )
    config = load_config(write("head.yaml", f"task: {task_name}\n{text}"))
    with pytest.raises(ConfigError, match=r"head.yaml:\d+:\d+: model.layers\[5\]: .*softmax"):
        task_named(task_name).check_head((None, 10), 10, config)


def test_a_loss_of_another_task_is_named_at_its_line(write):
    text = (REPO / "configs" / "mnist.yaml").read_text()
    with pytest.raises(
        ConfigError, match=r"loss.yaml:31:\d+: train.loss: categorical_crossentropy"
    ):
        load_config(write("loss.yaml", f"task: regression\n{text}"))
