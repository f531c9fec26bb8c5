"""`cnnctl tune`: search space checked before training, trials as run folders, workers, resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnctl.cli import main
from cnnctl.config import duration_seconds, load_config
from cnnctl.config.paths import set_path
from cnnctl.errors import PathError

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]

TUNED = """\
name: tiny
data:
  dataset: mnist
  limit: 1000
model:
  input_shape: [28, 28, 1]
  layers:
    - type: Conv2D
      filters: 4
      kernel_size: [3, 3]
      activation: relu
    - type: MaxPooling2D
      pool_size: [4, 4]
    - Flatten
    - type: Dropout
      rate: 0.2
    - type: Dense
      units: 10
      activation: softmax
train:
  epochs: 1
  batch_size: 64
tune:
  metric: val_accuracy
  trials: 6
  sampler: random
  parameters:
    train.optimizer.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    model.layers.0.filters: {type: choice, values: [2, 4]}
"""
PARAMETER_LINE = 28  # the line after `parameters:` in TUNED, where a test adds one


def with_parameter(text: str) -> str:
    lines = TUNED.splitlines()
    assert lines[PARAMETER_LINE - 2].strip() == "parameters:"
    return "\n".join([*lines[: PARAMETER_LINE - 1], f"    {text}"]) + "\n"


def trials_csv(study: Path) -> list[dict[str, str]]:
    with open(study / "trials.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def start(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CNNCTL, "tune", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.1)


# --------------------------------------------------------------------------- before any trial


@pytest.mark.parametrize(
    ("parameter", "where", "message"),
    [
        (
            "model.layers.9.filters: {type: choice, values: [2, 4]}",
            f"{PARAMETER_LINE}:5",
            "tune.parameters.model.layers.9.filters: model.layers[9]: no such list item (the list "
            "has 5)",
        ),
        (
            "model.layers.3.rate: {type: uniform, low: 0.1, high: 1.5}",
            f"{PARAMETER_LINE}:58",
            "tune.parameters.model.layers.3.rate.high: 1.5 makes the config invalid: "
            "model.layers[3].rate: ",
        ),
        (
            "model.layers.0.filterz: {type: int, low: 2, high: 8}",
            f"{PARAMETER_LINE}:46",
            "unknown argument of Conv2D (did you mean 'filters'?)",
        ),
        (
            "model.layers.0.kernel_size: {type: choice, values: [[3, 3], [40, 40]]}",
            f"{PARAMETER_LINE}:65",
            "values[1]: [40, 40] makes the config invalid: model.layers[0]: Conv2D cannot take an "
            "input",
        ),
        (
            "train.batch_size: {type: uniform, low: 16, high: 64}",
            f"{PARAMETER_LINE}:44",
            "16.0 makes the config invalid: train.batch_size: Input should be a valid integer",
        ),
        (
            "model.layers.0.filters.x: {type: int, low: 1, high: 8}",
            f"{PARAMETER_LINE}:5",
            "model.layers[0].filters is a single value, not a section",
        ),
        (
            "train.optimizer.learning_rate: {type: loguniform, low: 0, high: 1}",
            f"{PARAMETER_LINE}:36",
            "a log scale needs low > 0, got 0",
        ),
        (
            "model.layers.3.rate: {type: uniform, low: 0.5, high: 0.5}",
            f"{PARAMETER_LINE}:26",
            "low (0.5) must be below high (0.5)",
        ),
    ],
    ids=[
        "bad-path",
        "bad-range",
        "unknown-argument",
        "bad-choice",
        "float-for-int",
        "into-a-value",
        "log-of-zero",
        "empty-range",
    ],
)
def test_a_bad_search_space_fails_before_training(runner, write, parameter, where, message):
    config = write("tune.yaml", with_parameter(parameter))
    result = runner.invoke(main, ["tune", str(config)])
    assert result.exit_code == 2, result.output
    assert f"Error: tune.yaml:{where}: " in result.output
    assert message in result.output
    assert not Path("runs").exists()  # nothing trained, no study made


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("  metric: val_accuracy", "  metric: val_acc"),
            "tune.yaml:24:11: tune.metric: 'val_acc' is not logged (did you mean 'val_accuracy'?)",
        ),
        (
            ("  sampler: random", "  sampler: grid"),
            "tune.yaml:28:36: tune.parameters.train.optimizer.learning_rate: the grid sampler "
            "needs a finite",
        ),
        (
            ("  trials: 6", "  trials: 6\n  timeout: soon"),
            "tune.yaml:26:12: tune.timeout: expected a duration such as 30m, 2h or 90s, got 'soon'",
        ),
    ],
    ids=["metric-not-logged", "grid-of-floats", "bad-timeout"],
)
def test_tune_section_mistakes_name_their_line(runner, write, edit, message):
    config = write("tune.yaml", TUNED.replace(*edit))
    result = runner.invoke(main, ["tune", str(config)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_config_without_tune_section_is_refused(runner, small_config):
    result = runner.invoke(main, ["tune", str(small_config)])
    assert result.exit_code == 2
    assert "small.yaml: has no tune: section to search with" in result.output


def test_train_ignores_the_tune_section(runner, write):
    config = write("tune.yaml", TUNED)
    result = runner.invoke(main, ["validate", str(config)])
    assert result.exit_code == 0, result.output


def test_paths_are_the_same_as_set_and_reach_into_bare_names(write):
    config = load_config(write("tune.yaml", TUNED))
    data = config.model_dump(mode="json", exclude_none=True)
    set_path(data, "train.optimizer.learning_rate", 0.01)  # `optimizer: adam` by default
    set_path(data, "model.layers.0.kernel_size", [5, 5])
    assert data["train"]["optimizer"] == {"type": "adam", "learning_rate": 0.01}
    assert data["model"]["layers"][0]["kernel_size"] == [5, 5]
    with pytest.raises(PathError, match=r"model.layers\[7\]: no such list item"):
        set_path(data, "model.layers.7.units", 3)


def make_study(direction: str = "maximize", attrs: dict | None = None) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    Path("runs/tiny-tune").mkdir(parents=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend("runs/tiny-tune/journal.log"))
    study = optuna.create_study(study_name="tiny-tune", storage=storage, direction=direction)
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)


@pytest.mark.parametrize(
    ("prepare", "args", "message"),
    [
        (
            lambda: make_study(attrs={"cnnctl": {"config": {}, "tune": {}}}),
            [],
            "tune.yaml: differs from the config study 'tiny-tune' was started with (in "
            "config.data, ",
        ),
        (
            lambda: make_study("minimize"),
            [],
            "study 'tiny-tune' was started to minimize, this config asks to maximize",
        ),
        (
            lambda: None,
            ["--storage", "nosuchdb://user:secret@host/db"],
            "--storage nosuchdb://user:***@host/db: cannot open it",
        ),
        (lambda: None, ["--name", "../up"], "--name '../up': a study name is letters, digits"),
        (
            lambda: (
                Path("runs/tiny-tune").mkdir(parents=True)
                or Path("runs/tiny-tune/config.yaml").write_text("")
            ),
            [],
            "runs/tiny-tune: is a run folder, not a study folder",
        ),
        (
            lambda: (
                Path("runs/tiny-tune").mkdir(parents=True)
                or os.mkfifo("runs/tiny-tune/journal.log")
            ),
            [],
            "runs/tiny-tune/journal.log: not a regular file",
        ),
    ],
    ids=["other-config", "other-goal", "bad-storage", "bad-name", "run-folder", "fifo-journal"],
)
def test_a_study_that_cannot_be_continued_is_refused(runner, write, prepare, args, message):
    config = write("tune.yaml", TUNED)
    prepare()
    result = runner.invoke(main, ["tune", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not list(Path("runs").glob("*/trial-*"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("90s", 90), (45, 45), ("1.5d", 129600), ("soon", 0), ("-5m", 0)],
)
def test_timeouts_read_as_people_write_them(text, seconds):
    assert duration_seconds(text) == seconds


# --------------------------------------------------------------------------- studies


def test_a_killed_trial_says_whether_its_folder_was_made(write):
    """Two trials whose worker died: one after making its folder, one between asking and that."""
    from rich.console import Console

    from cnnctl.tune.report import Watcher
    from cnnctl.tune.study import HOST, fail_dead_trials, load_optuna, open_storage

    config = load_config(write("tune.yaml", TUNED))
    folder = Path("runs/tiny-tune")
    folder.mkdir(parents=True)
    storage = open_storage(None, folder)
    study = load_optuna().create_study(study_name="tiny-tune", storage=storage)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    for number in range(2):
        trial = study.ask()
        for key, value in (("host", HOST), ("pid", int(gone)), ("run", f"trial-{number:03d}")):
            trial.set_user_attr(key, value)
    (folder / "trial-000").mkdir()

    assert fail_dead_trials(study, storage) == [0, 1]
    rows = Watcher(study, config, "tiny-tune", folder, Console()).rows(study.get_trials())
    assert [(r["state"], r["note"]) for r in rows] == [
        ("failed", "killed; its folder is kept: trial-000"),
        ("failed", "killed before it made its folder; it will be run again"),
    ]


@pytest.mark.slow
def test_six_trials_with_two_workers_give_runs_a_table_and_a_best_config(runner, write):
    config = write("tune.yaml", TUNED)
    done = subprocess.run(
        [*CNNCTL, "tune", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    study = Path("runs/tiny-tune")
    rows = trials_csv(study)
    assert [r["state"] for r in rows] == ["complete"] * 6
    assert (
        len({(r["train.optimizer.learning_rate"], r["model.layers.0.filters"]) for r in rows}) == 6
    )
    assert sorted(p.name for p in study.glob("trial-*")) == [f"trial-{n:03d}" for n in range(6)]
    assert done.stdout.count("complete  val_accuracy") >= 6  # one line per trial, then the table
    assert "study tiny-tune: val_accuracy (maximize)" in done.stdout
    assert (study / "history.png").stat().st_size > 0 and (
        study / "importances.png"
    ).stat().st_size > 0
    listed = runner.invoke(main, ["runs", str(study), "--json"])
    assert listed.exit_code == 0 and listed.output.count('"status": "finished"') == 6

    best = yaml.safe_load((study / "best.yaml").read_text())
    assert "tune" not in best and best["name"] == "tiny-tune-best"
    winner = max(rows, key=lambda r: float(r["value"]))
    assert best["train"]["optimizer"]["learning_rate"] == float(
        winner["train.optimizer.learning_rate"]
    )
    trained = runner.invoke(main, ["train", str(study / "best.yaml")])
    assert trained.exit_code == 0, trained.output
    assert Path("runs/tiny-tune-best/model.keras").is_file()


@pytest.mark.slow
def test_sigkill_during_a_trial_then_the_same_command_finishes_the_study(write):
    config = write("tune.yaml", TUNED)
    study = Path("runs/tiny-tune")
    process = start(config, "--workers", "2")
    wait_for(study / "trial-002" / "config.yaml", process)  # the third trial is training
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.5)  # the workers notice their parent is gone

    done = subprocess.run(
        [*CNNCTL, "tune", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "killed trials marked failed" in done.stdout
    rows = trials_csv(study)
    killed = [r for r in rows if r["state"] == "failed"]
    assert sum(r["state"] == "complete" for r in rows) == 6
    assert "2" in [r["trial"] for r in killed]
    # The other worker's trial may have been killed before it made its folder, or after.
    folders = sorted(p.name for p in study.glob("trial-*"))
    for row in killed:
        kept = row["run"] in folders
        assert row["note"] == (
            f"killed; its folder is kept: {row['run']}"
            if kept
            else "killed before it made its folder; it will be run again"
        )
    assert folders == [
        r["run"] for r in rows if r["state"] == "complete" or r["run"] in folders
    ]  # none reused, none overwritten
    assert all(r["run"] == f"trial-{int(r['trial']):03d}" for r in rows)
    for name in [r["run"] for r in rows if r["state"] == "complete"] + ["trial-002"]:
        assert yaml.safe_load((study / name / "config.yaml").read_text())["name"] == name


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_command_that_resumes(write):
    # Three epochs a trial: a stop asked for in the first epoch cannot end as a finished trial
    # (with one epoch, the stop took effect at the end of that epoch, and the trial completed).
    config = write("tune.yaml", TUNED.replace("epochs: 1", "epochs: 3"))
    process = start(config, "--trials", "2")
    wait_for(Path("runs/tiny-tune/trial-000/config.yaml"), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "hint: resume with: cnnctl tune tune.yaml --name tiny-tune --trials 2" in err
    rows = trials_csv(Path("runs/tiny-tune"))
    assert rows[0]["note"] == "interrupted; it will be run again", rows


@pytest.mark.slow
def test_the_median_pruner_stops_a_hopeless_trial(write):
    text = TUNED.replace("  epochs: 1", "  epochs: 3").replace(
        "  trials: 6", "  trials: 4\n  startup_trials: 1"
    )
    text = text.replace(
        "{type: loguniform, low: 1.0e-4, high: 1.0e-2}", "{type: choice, values: [0.01, 1.0e-7]}"
    )
    config = write("tune.yaml", text)
    done = subprocess.run(
        [*CNNCTL, "tune", str(config)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    rows = trials_csv(Path("runs/tiny-tune"))
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, rows
    run = Path("runs/tiny-tune") / pruned[0]["run"]
    assert yaml.safe_load((run / "run.json").read_text())["status"] == "pruned"
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) < 3
    assert (run / "model.keras").is_file()  # a pruned trial is still a whole run folder


# --------------------------------------------------------------------------- what tune shows

RATE = "model.layers.3.rate: {type: uniform, low: 0.1, high: 0.5}"
SEARCHED = {  # three trials as a study records them: the values Optuna handed out, and the score
    0: ({"learning_rate": 0.00012345678, "filters": 2, "rate": 0.25}, 0.81),
    1: ({"learning_rate": 0.0054321, "filters": 4, "rate": 0.123456}, 0.766666),
    2: ({"learning_rate": 0.001, "filters": 4, "rate": 0.4}, 0.7),
}


def fake_study(folder: Path, searched: dict = SEARCHED, metric_of=lambda v: v):
    """A journal study holding finished trials without training anything (values as given)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from cnnctl.tune.study import load_optuna, open_storage

    folder.mkdir(parents=True, exist_ok=True)
    study = load_optuna().create_study(
        study_name=folder.name, storage=open_storage(None, folder), direction="maximize"
    )
    paths = {
        "learning_rate": ("train.optimizer.learning_rate", FloatDistribution(1e-4, 1e-2, log=True)),
        "filters": ("model.layers.0.filters", CategoricalDistribution([2, 4])),
        "rate": ("model.layers.3.rate", FloatDistribution(0.1, 0.5)),
    }
    for number, (values, value) in searched.items():
        study.add_trial(
            create_trial(
                params={paths[k][0]: v for k, v in values.items()},
                distributions={paths[k][0]: paths[k][1] for k in values},
                value=metric_of(value),
                user_attrs={"run": f"trial-{number:03d}"},
            )
        )
    return study


def watch(write, folder: Path, width: int | None = 80, *searched):
    import io

    from rich.console import Console

    from cnnctl.tune.report import Watcher

    config = load_config(write("tune.yaml", TUNED + f"    {RATE}\n"))
    study = fake_study(folder, *searched)
    out = io.StringIO()
    console = Console(
        file=out, width=width or 100_000, force_terminal=width is not None, color_system=None
    )
    return Watcher(study, config, folder.name, folder, console), study, out


def test_trial_lines_fit_the_terminal_and_name_parameters_by_path(write):
    watcher, study, _ = watch(write, Path("runs/tiny-tune"))
    trials = study.get_trials()
    lines = [str(line) for trial in trials for line in watcher.lines(trial, trials)]
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[1].startswith("trial   1  complete  val_accuracy 0.7667  learning_rate=0.005432 ")
    watcher.width = 130
    (line,) = watcher.lines(trials[1], trials)
    assert str(line).startswith("trial   1  complete  val_accuracy 0.7667  best 0.8100 (trial 0)")
    assert str(line).endswith("learning_rate=0.005432 layers.0.filters=4 layers.3.rate=0.1235")


def test_trial_lines_in_a_pipe_are_whole(write):
    watcher, study, _ = watch(write, Path("runs/tiny-tune"), None)
    trials = study.get_trials()
    (line,) = watcher.lines(trials[0], trials)
    assert str(line).endswith("learning_rate=0.0001235 layers.0.filters=2 layers.3.rate=0.25")


@pytest.mark.parametrize("width", [80, 100, None], ids=["80", "100", "pipe"])
def test_the_final_table_fits_with_whole_headers_and_one_number_format(write, width):
    import io

    from rich.console import Console

    from cnnctl.tune.report import study_summary

    watcher, _, _ = watch(write, Path("runs/tiny-tune"))
    out = io.StringIO()
    Console(file=out, width=width or 100_000, color_system=None).print(
        study_summary(watcher.result(3), width)
    )
    text = out.getvalue()
    assert all(len(line.rstrip()) <= (width or 10_000) for line in text.splitlines()), text
    assert "…" not in text
    header = next(line for line in text.splitlines() if "val_accuracy" in line and "trial" in line)
    for name in ("learning_rate", "layers.0.filters", "layers.3.rate"):
        assert name in header or (width and "columns left out at this width" in text), text
    assert "0.8100" in text and "0.7667" in text and "0.7000" in text
    assert " 0.81 " not in text


def test_best_yaml_is_the_file_as_written_with_the_best_values_and_names_the_set_values(write):
    from rich.console import Console

    from cnnctl.tune.report import Watcher, study_summary

    config_file = write("tune.yaml", TUNED + f"    {RATE}\n")
    overrides = ("data.limit=300", "train.epochs=2", "tune.trials=3")
    config = load_config(config_file, overrides)
    folder = Path("runs/tiny-tune")
    watcher = Watcher(
        fake_study(folder), config, "tiny-tune", folder, Console(), config_file, overrides
    )
    result = watcher.result(3)

    text = (folder / "best.yaml").read_text()
    best = yaml.safe_load(text)
    assert best["data"] == {"dataset": "mnist", "limit": 1000}  # no label_column, test_fraction
    assert best["train"] == {
        "epochs": 1,
        "batch_size": 64,
        "optimizer": {"type": "adam", "learning_rate": 0.00012345678},
    }
    assert [best["model"]["layers"][i] for i in (0, 3)] == [
        {"type": "Conv2D", "filters": 2, "kernel_size": [3, 3], "activation": "relu"},
        {"type": "Dropout", "rate": 0.25},
    ]
    assert "tune" not in best and best["name"] == "tiny-tune-best"
    assert text.startswith("# The best trial of study tiny-tune: trial 0, val_accuracy 0.8100.\n")
    assert (
        "# The search also ran with these --set values, left out of this file:\n"
        "#   data.limit=300 train.epochs=2\n"
        "# To train as the trials did: cnnctl train runs/tiny-tune/best.yaml "
        "--set data.limit=300 --set train.epochs=2\n"
        "# Train it with: cnnctl train runs/tiny-tune/best.yaml\n"
    ) in text
    assert "tune.trials" not in text
    assert load_config(folder / "best.yaml").train.epochs == 1
    assert result.summary()["left_out_of_best_config"] == ["data.limit=300", "train.epochs=2"]
    out = Console(file=__import__("io").StringIO(), width=200, color_system=None)
    out.print(study_summary(result))
    assert "(without the search's --set data.limit=300 train.epochs=2" in out.file.getvalue()


def test_the_history_plot_names_the_metric_and_ticks_whole_trials():
    import matplotlib

    matplotlib.use("Agg")
    from cnnctl.tune.report import history_axes

    axes = history_axes(fake_study(Path("runs/tiny-tune")), "val_accuracy")
    axes.figure.canvas.draw()
    low, high = axes.get_xlim()
    ticks = [t for t in axes.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "val_accuracy" in labels and "Objective Value" not in labels


def test_importances_leave_out_parameters_that_never_varied():
    from cnnctl.tune.report import save_plots, varying_parameters

    folder = Path("runs/tiny-tune")
    same_filters = {n: ({**values, "filters": 4}, v) for n, (values, v) in SEARCHED.items()}
    assert varying_parameters(fake_study(folder, same_filters)) == [
        "model.layers.3.rate",
        "train.optimizer.learning_rate",
    ]
    one = {
        n: ({"filters": 4, "rate": 0.2, "learning_rate": values["learning_rate"]}, v)
        for n, (values, v) in SEARCHED.items()
    }
    other = Path("runs/one-varies")
    notes = save_plots(fake_study(other, one), other, "val_accuracy")
    assert notes == [
        "importances.png: not drawn; it needs 2 or more parameters that took different values "
        "(varied: train.optimizer.learning_rate)"
    ]
    assert (other / "history.png").is_file() and not (other / "importances.png").exists()


def test_runs_lists_a_study_as_one_row_with_its_best_value(runner, write):
    from rich.console import Console

    from cnnctl.tune.report import Watcher

    config_file = write("tune.yaml", TUNED + f"    {RATE}\n")
    folder = Path("runs/tiny-tune")
    study = fake_study(folder)
    Watcher(study, load_config(config_file), "tiny-tune", folder, Console()).result(3)
    (folder / "trial-000").mkdir()
    (folder / "trial-000" / "config.yaml").write_text("name: trial-000\n")

    listed = runner.invoke(main, ["runs"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "tiny-tune" in line)
    assert [cell.strip() for cell in row.split("│")] == [
        "tiny-tune",
        "3",
        "val_accuracy 0.8100 (trial 0)",
        "runs/tiny-tune",
    ]
    assert "a study's trials: cnnctl runs runs/tiny-tune" in listed.stdout
    assert "no runs in" not in listed.output
    (entry,) = [e for e in __import__("json").loads(runner.invoke(main, ["runs", "--json"]).stdout)]
    assert entry == {
        "name": "tiny-tune",
        "path": "runs/tiny-tune",
        "trials_done": 3,
        "metric": "val_accuracy",
        "best_value": 0.81,
        "best_trial": 0,
        "kind": "study",
    }
