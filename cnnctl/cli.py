"""The `cnnctl` command line: parse, make one call, render. No TensorFlow at import time."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from cnnctl import __version__
from cnnctl.errors import CnnctlError, explain

LATEST = "\0latest"  # `--resume` given without a run name

runs_dir_option = click.option(
    "--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
    envvar="CNNCTL_RUNS_DIR", show_default=True, help="Folder that holds the run folders.",
)
legacy_option = click.option("--legacy-h5", is_flag=True,
                             help="Also load legacy .h5 model files (only ones you trust).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout, nothing else.")


class CnnctlGroup(click.Group):
    """Shows every error as a short message (`errors.explain`); the traceback only with --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException) as error:
            if ctx.params.get("debug") and isinstance(error, CnnctlError):
                traceback.print_exc()
            raise
        except (Exception, KeyboardInterrupt) as error:
            if ctx.params.get("debug"):
                traceback.print_exc()
            raise explain(error) from error


def _tensorflow() -> None:
    """Import TensorFlow now (quietly unless --verbose): after the cheap checks, before the work."""
    from cnnctl.runtime import load_tensorflow

    load_tensorflow(verbose=click.get_current_context().find_root().params.get("verbose", False))


def _console(quiet: bool = False):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False)


@click.group(cls=CnnctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnctl")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.option("--verbose", is_flag=True, help="Let TensorFlow and Keras print their own messages.")
@click.option("--offline", is_flag=True, help="Never download datasets (also CNNCTL_OFFLINE=1).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Raise a safety limit for files you trust, e.g. --limit pixels=200000000.")
def main(debug: bool, verbose: bool, offline: bool, limits: tuple[str, ...]) -> None:
    """Train convolutional neural networks described in YAML.

    \b
      cnnctl train configs/mnist.yaml
      cnnctl evaluate                 # the latest run
      cnnctl predict image.png        # with the latest run's best model
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if offline:
        os.environ["CNNCTL_OFFLINE"] = "1"  # read where the data sources look for files
    if limits:
        from cnnctl.limits import ENV, check_limit_names

        os.environ[ENV] = check_limit_names(limits)  # read by every file reader (cnnctl/limits.py)


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and show the network it builds."""
    from cnnctl.config import load_config

    cfg = load_config(config, overrides)
    _tensorflow()
    from cnnctl import report
    from cnnctl.builder import build_model, compile_model
    from cnnctl.data import num_classes_of

    model = build_model(cfg, num_classes_of(cfg))
    compile_model(model, cfg)
    console = _console()
    console.print(report.layers_table(model))
    console.print(f"[green]ok[/]: {config} is valid")


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
@click.option("--epochs", type=click.IntRange(min=1), help="Shortcut for --set train.epochs=N.")
@click.option("--name", help="Run name (default: the config's name).")
@click.option("--resume", is_flag=False, flag_value=LATEST, default=None, metavar="[RUN]",
              help="Continue an interrupted run (default: the latest).")
@runs_dir_option
@json_option
def train(config: Path | None, overrides: tuple[str, ...], epochs: int | None, name: str | None,
          resume: str | None, runs_dir: Path, as_json: bool) -> None:
    """Train the network described by CONFIG into a new run folder."""
    from cnnctl.config import load_config
    from cnnctl.runs import find_run

    overrides += (f"train.epochs={epochs}",) if epochs else ()
    overrides += (f"name={json.dumps(name)}",) if name else ()
    console = _console(quiet=as_json)
    if resume is not None:
        run = find_run(None if resume == LATEST else resume, runs_dir)
        _tensorflow()
        from cnnctl.train import resume_run

        result = resume_run(run, console, overrides, config)
    elif config is None:
        raise click.UsageError("give a CONFIG file to train, or --resume RUN")
    else:
        cfg = load_config(config, overrides)
        _tensorflow()
        from cnnctl.train import train_run

        result = train_run(cfg, runs_dir, console)
    if not result.written:
        click.echo(f"worker done after {result.epochs_done} epochs; the chief writes the run folder", err=True)
        return
    from cnnctl import report

    _render(report.training_summary(result.summary()), result.summary(), as_json)


@main.command()
@click.argument("run", required=False)
@click.option("--model", "model_file", type=click.Path(path_type=Path), help="A .keras file instead of a run.")
@click.option("--data", help="A config file or data path to evaluate on (default: the run's data).")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@legacy_option
@runs_dir_option
@json_option
def evaluate(run: str | None, model_file: Path | None, data: str | None, split: str, legacy_h5: bool,
             runs_dir: Path, as_json: bool) -> None:
    """Score RUN's best model (default: the latest run) and write evaluation.json."""
    from cnnctl.runs import find_run

    if run is not None and model_file is not None:
        raise click.UsageError("give a RUN or --model FILE, not both")
    found = None if model_file is not None else find_run(run, runs_dir)
    _tensorflow()
    from cnnctl import report
    from cnnctl.evaluate import evaluate_run

    result = evaluate_run(found, split, model_file, data, legacy_h5)
    _render(report.evaluation_table(result), result, as_json)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--run", "run_ref", help="Run whose model to use (default: the latest).")
@click.option("--model", "model_file", type=click.Path(path_type=Path), help="A .keras file instead of a run.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--invert", is_flag=True, help="For dark-on-light images (MNIST is light on dark).")
@legacy_option
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the results to a file.")
@runs_dir_option
@json_option
@click.pass_context
def predict(ctx: click.Context, paths: tuple[str, ...], run_ref: str | None, model_file: Path | None,
            top_k: int, batch_size: int, invert: bool, legacy_h5: bool, output_format: str,
            output: Path | None, runs_dir: Path, as_json: bool) -> None:
    """Classify image files, folders or globs with a run's best model."""
    from cnnctl.errors import DataError
    from cnnctl.runs import Run, find_run

    if model_file is not None and run_ref is not None:
        raise click.UsageError("give --run or --model, not both")
    if model_file is not None:
        classes = model_file.parent / "classes.json"
        names = Run(model_file.parent).class_names() if classes.is_file() else None
    else:
        run = find_run(run_ref, runs_dir)
        model_file, names = run.model, run.class_names()
    _tensorflow()
    from cnnctl import report
    from cnnctl.predict import predict_images

    result = predict_images(list(paths), model_file, names, top_k, batch_size, invert, legacy_h5)
    from cnnctl.escape import safe_text

    for path, reason in result.failures:
        click.echo(safe_text(f"{path}: {reason}"), err=True)
    if not result.items:
        raise DataError("no image could be read", "pass PNG or JPEG files, folders of them, or globs")
    output_format = "json" if as_json else output_format
    if output is not None:
        from cnnctl.runs import write_text

        if output_format == "table":  # a file gets data: JSON for .json, else CSV
            output_format = "json" if output.suffix == ".json" else "csv"
        text = report.predictions_csv(result.items) if output_format == "csv" else json.dumps(result.items, indent=2)
        write_text(output, text)
        click.echo(f"wrote {len(result.items)} predictions to {output}", err=True)
    elif output_format == "csv":
        click.echo(report.predictions_csv(result.items), nl=False)
    else:
        _render(report.predictions_table(result.items), result.items, output_format == "json")
    if result.failures:
        ctx.exit(1)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), required=False,
                default=Path("runs"), envvar="CNNCTL_RUNS_DIR")
@json_option
def runs(folder: Path, as_json: bool) -> None:
    """List the runs in FOLDER (default: runs/, or $CNNCTL_RUNS_DIR) with their progress and results."""
    from cnnctl import report
    from cnnctl.runs import describe, list_runs

    found = [describe(run) for run in list_runs(folder)]
    _render(report.runs_table(found), found, as_json)


@main.command()
@json_option
def info(as_json: bool) -> None:
    """Versions, devices, the strategy `auto` picks, and where data is looked for: for bug reports."""
    _tensorflow()
    import platform

    import keras
    import tensorflow as tf

    from cnnctl import report
    from cnnctl.builder import mixed_policy
    from cnnctl.data.sources import BUILTINS, builtin_candidates, offline
    from cnnctl.distribute import auto_strategy_name, cluster

    facts = {
        "cnnctl": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "devices": [f"{d.device_type}:{d.name.split(':')[-1]}" for d in tf.config.list_physical_devices()],
        "auto strategy": auto_strategy_name(), "TF_CONFIG": cluster(),
        "mixed precision": mixed_policy() or "not supported here (float32)",
        "data dir": os.environ.get("CNNCTL_DATA_DIR") or "(CNNCTL_DATA_DIR not set)",
        "data lookup": {name: [str(p) for p in builtin_candidates(name)] for name in BUILTINS},
        "offline": offline(),
        "runs dir": os.environ.get("CNNCTL_RUNS_DIR", "runs"),
    }
    _render(report.facts_table(facts), facts, as_json)


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """List the built-in datasets and where each one was found."""
    if ctx.invoked_subcommand is not None:
        return
    from cnnctl import report
    from cnnctl.data.sources import BUILTINS, find_builtin, offline

    rows = [{"name": b.name, "shape": list(b.shape), "classes": len(b.classes),
             "found": str(find_builtin(b.name) or ""),
             "fallback": "not found (offline)" if offline() else "would be downloaded by Keras"}
            for b in BUILTINS.values()]
    _render(report.datasets_table(rows), rows, as_json)


@datasets.command("check")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@json_option
def datasets_check(config: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check CONFIG's data: images per class and split, leakage between splits, unreadable files."""
    from cnnctl.config import load_config

    cfg = load_config(config, overrides)
    _tensorflow()
    from dataclasses import asdict

    from cnnctl import report
    from cnnctl.data import load_dataset
    from cnnctl.data.checks import check_dataset

    checks = check_dataset(load_dataset(cfg))
    _render(report.checks_table(checks), asdict(checks), as_json)


def _render(renderable, data, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _console().print(renderable)


if __name__ == "__main__":
    sys.exit(main())
