"""The `cnnctl` command line: parse, make one call, render. No TensorFlow at import time."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cnnctl import __version__

# The choices of options are the constants their wings check against (no TensorFlow here).
from cnnctl.config.schema import SPLITS, TTA_MODES
from cnnctl.errors import CnnctlError, explain
from cnnctl.explain import FORMATS as EXPLAIN_FORMATS
from cnnctl.explain import METHODS as EXPLAIN_METHODS
from cnnctl.limits import EVAL_BATCH
from cnnctl.scoring.export import FORMATS, QUANTIZE

LATEST = "\0latest"  # `--resume` given without a run name
GLOBAL_FLAGS = {
    "debug": "Show the Python traceback of an error.",
    "verbose": "Let TensorFlow and Keras print their own messages.",
    "offline": "Never download datasets (also CNNCTL_OFFLINE=1).",
}

legacy_option = click.option(
    "--legacy-h5", is_flag=True, help="Also load legacy .h5 model files (only ones you trust)."
)
tta_option = click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    help="Test-time augmentation: horizontal_flip averages each image with its mirror "
    "(default: the run config's model.tta).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout, nothing else."
)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand counts as if given before it."""
    if value:
        ctx.find_root().params[param.name] = value


def global_options(command):
    """--debug, --verbose, --offline and --runs-dir, accepted after the subcommand as well."""
    for name, help_text in reversed(GLOBAL_FLAGS.items()):
        command = click.option(
            f"--{name}", is_flag=True, expose_value=False, callback=_remember, help=help_text
        )(command)
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember,
        help="Folder that holds the run folders (default: runs).",
    )(command)


def _setting(name: str) -> Any:
    return click.get_current_context().find_root().params.get(name)


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
            explained = explain(error)
            if ctx.params.get("debug"):
                traceback.print_exc()
                if explained.exit_code == 1:
                    explained.hint = "please report it, with the traceback above"
            raise explained from error


def _tensorflow() -> None:
    """Import TensorFlow now (quietly unless --verbose): after the cheap checks, before the work."""
    from cnnctl.startup import load_tensorflow

    load_tensorflow(verbose=bool(_setting("verbose")))


def _console(quiet: bool = False):
    """The console for results: fitted to a terminal; never wrapped or cut in a pipe or a file."""
    from rich.console import Console

    console = Console(quiet=quiet, highlight=False)
    if not console.is_terminal:
        console = Console(quiet=quiet, highlight=False, width=100_000, soft_wrap=True)
    return console


def _width(console) -> int | None:
    """The width to fit tables to: a terminal's, or None (a pipe: full lines, nothing cut)."""
    return console.width if console.is_terminal else None


def _note(message: str) -> None:
    """A line for the person, not for programs: stderr, so stdout stays clean under --json.

    Escaped: file and class names in it may hold terminal control sequences.
    """
    from cnnctl.escape import safe_text

    click.echo(safe_text(message), err=True)


@contextlib.contextmanager
def _stdout_for_json(as_json: bool) -> Iterator[None]:
    """Under --json, whatever the work prints goes to stderr.

    For example Keras' "Downloading data from ...".
    """
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@click.group(cls=CnnctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnctl")
@click.option("--debug", is_flag=True, help=GLOBAL_FLAGS["debug"])
@click.option("--verbose", is_flag=True, help=GLOBAL_FLAGS["verbose"])
@click.option("--offline", is_flag=True, envvar="CNNCTL_OFFLINE", help=GLOBAL_FLAGS["offline"])
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    envvar="CNNCTL_RUNS_DIR",
    show_default=True,
    help="Folder that holds the run folders.",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="NAME=VALUE",
    help="Raise a safety limit for files you trust, e.g. --limit pixels=200000000.",
)
def main(
    debug: bool, verbose: bool, offline: bool, runs_dir: Path, limits: tuple[str, ...]
) -> None:
    """Train convolutional neural networks described in YAML.

    \b
      cnnctl train configs/mnist.yaml
      cnnctl evaluate                 # the latest run
      cnnctl predict image.png        # with the latest run's best model

    Global options (--debug, --verbose, --offline, --runs-dir) go before or after the command.
    """
    from cnnctl.limits import ENV, check_limit_names
    from cnnctl.startup import private_tmp

    private_tmp()  # before TensorFlow or onnxruntime is imported: their files go with it
    os.environ[ENV] = check_limit_names(limits)  # --limit and CNNCTL_LIMITS: one parser


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.epochs=3 (repeatable).",
)


@main.command(short_help="Check a config and show the network it builds.")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@global_options
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and show the network it builds."""
    from cnnctl.config import inferred, load_config

    cfg = load_config(config, overrides)
    _tensorflow()
    from cnnctl import report
    from cnnctl.data.dataset import num_classes_of
    from cnnctl.model.builder import build_model, compile_model

    model = build_model(cfg, num_classes_of(cfg), bool(_setting("offline")))
    compile_model(model, cfg)
    console = _console()
    console.print(report.layers_table(model, config_layers=len(cfg.model.layers)))
    origin = inferred(cfg, ("model", "input_shape"))
    if origin:
        console.print(f"model.input_shape: {cfg.model.input_shape} ({origin})", markup=False)
    console.print(f"[green]ok[/]: {config} is valid")


@main.command(short_help="Train a config's network into a new run folder.")
@click.argument("config", type=click.Path(path_type=Path), required=False)
@set_option
@click.option("--epochs", type=click.IntRange(min=1), help="Shortcut for --set train.epochs=N.")
@click.option("--name", help="Run name (default: the config's name).")
@click.option(
    "--track", type=click.Choice(["mlflow"]), help="Shortcut for --set train.track=mlflow."
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value=LATEST,
    default=None,
    metavar="[RUN]",
    help="Continue an interrupted run (default: the latest).",
)
@json_option
@global_options
def train(
    config: Path | None,
    overrides: tuple[str, ...],
    epochs: int | None,
    name: str | None,
    track: str | None,
    resume: str | None,
    as_json: bool,
) -> None:
    """Train the network described by CONFIG into a new run folder."""
    values = {
        key: (option, value)
        for key, option, value in (("train.epochs", "--epochs", epochs), ("name", "--name", name))
        if value is not None
    }
    if track:
        values["train.track"] = ("--track", track)
    if resume is None and config is None:
        raise click.UsageError("give a CONFIG file to train, or --resume RUN")
    with _stdout_for_json(as_json):
        from cnnctl import report

        display = report.TrainingDisplay(_console(quiet=as_json))
        if resume is not None:
            result = _resume(
                None if resume == LATEST else resume, display, overrides, config, values
            )
        else:
            from cnnctl.config import load_config

            result = _train_new(load_config(config, overrides, values), display)
    if not result.written:
        _note(f"worker done after {result.epochs_done} epochs; the chief writes the run folder")
        return
    _render(report.training_summary(result), result.summary(), as_json)


def _train_new(config, display):
    _tensorflow()
    from cnnctl.training.fit import train_run

    return train_run(config, _setting("runs_dir"), display, bool(_setting("offline")))


def _resume(ref: str | None, display, overrides, config: Path | None, values: dict):
    """Resume a run: every refusal (finished, still running, a changed config) before
    TensorFlow starts."""
    from cnnctl.runs import find_run
    from cnnctl.training.plan import check_resume

    run = find_run(ref, _setting("runs_dir"))
    check_resume(run, overrides, config, values)
    _note(f"resuming {run.path}")
    _tensorflow()
    from cnnctl.training.fit import resume_run

    result = resume_run(run, display, overrides, config, values, bool(_setting("offline")))
    if result.restarted:
        _note(f"{run.path} had no finished epoch: trained it from the start, in the same folder")
    return result


@main.command(short_help="Search a config's tune: section with Optuna.")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@click.option(
    "--trials", type=click.IntRange(min=1), help="Trials to finish (default: tune.trials)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=1,
    show_default=True,
    help="Trial processes on this machine.",
)
@click.option(
    "--storage", metavar="URL", help="An RDB URL shared by machines (default: a journal file)."
)
@click.option(
    "--name", "study", help="Study name: its folder under --runs-dir (default: <config name>-tune)."
)
@json_option
@global_options
def tune(
    config: Path,
    overrides: tuple[str, ...],
    trials: int | None,
    workers: int,
    storage: str | None,
    study: str | None,
    as_json: bool,
) -> None:
    """Search CONFIG's tune: section with Optuna; each trial is a run in
    RUNS_DIR/STUDY/trial-NNN."""
    from cnnctl.config import load_config

    cfg = load_config(config, overrides)
    _tensorflow()
    from cnnctl.tune.report import study_summary
    from cnnctl.tune.study import TuneOptions, run_study

    settings = [_setting(key) for key in ("runs_dir", "verbose", "offline")]
    options = TuneOptions(config, overrides, study, trials, workers, storage, *settings)
    with _stdout_for_json(as_json):
        result = run_study(cfg, options, _console(quiet=as_json))
    _render(study_summary(result, _width(_console())), result.summary(), as_json)


@main.command(short_help="Score a run's model and save the report.")
@click.argument("run", required=False)
@click.option(
    "--run", "run_option", metavar="RUN", help="The run to score (the same as the RUN argument)."
)
@click.option(
    "--model",
    "model_file",
    type=click.Path(path_type=Path),
    help="A .keras, .onnx or .tflite file instead of a run.",
)
@click.option(
    "--data", help="A config file, a built-in dataset or a data path (default: the run's data)."
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="test",
    show_default=True,
    help="Which split of the data to score.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the report files (default: the run folder).",
)
@tta_option
@legacy_option
@json_option
@global_options
def evaluate(
    run: str | None,
    run_option: str | None,
    model_file: Path | None,
    data: str | None,
    split: str,
    output: Path | None,
    tta: str | None,
    legacy_h5: bool,
    as_json: bool,
) -> None:
    """Score RUN's best model (default: the latest run with a model) and save the report.

    The test split of the run's own data goes to evaluation.json; other splits and other
    data get files of their own (evaluation-<split>.json, evaluation-<data>.json).
    """
    if run is not None and run_option is not None and run != run_option:
        raise click.UsageError("give the run once: as RUN or as --run")
    source = _scoring_source(run or run_option, model_file, tta, legacy_h5)
    scored = f"the {split} split of its run's data"
    if data:  # data given to evaluate: its own test split, or all of it where it has none
        scored = f"{data} (all of it, where it has no {split} split of its own)"
        scored = f"the {split} split of {data}" if split != "test" else scored
    _note(f"evaluating {source.model_file} on {scored}")
    _warn_if_training(source, model_file)
    with _stdout_for_json(as_json):
        if not source.exported:  # .onnx and .tflite run without TensorFlow
            _tensorflow()
        from cnnctl.scoring.evaluate import evaluate_run

        result = evaluate_run(source, split, data, output, bool(_setting("offline")))
    if result.skipped:
        first, where = result.skipped[0], result.saved[0] if result.saved else "the --json output"
        _note(
            f"warning: {len(result.skipped)} images could not be decoded and are left out "
            f"(first: {first['path']}: {first['reason']}); all are listed under 'skipped' in "
            f"{where}"
        )
    from cnnctl.tasks import task_named

    _render(task_named(result.task).evaluation_table(result), result.to_json(), as_json)


def _scoring_source(run: str | None, model_file: Path | None, tta: str | None, legacy_h5: bool):
    """The model to score with and what its run says of it, resolved once for the command."""
    if run is not None and model_file is not None:
        raise click.UsageError("give a RUN or --model FILE, not both")
    from cnnctl.scoring.source import resolve_source

    source = resolve_source(run, model_file, _setting("runs_dir"), tta, legacy_h5)
    if source.warning:  # what was guessed about a bare exported file
        _note(source.warning)
    return source


def _warn_if_training(source, model_file: Path | None) -> None:
    from cnnctl.runs import running_pid

    if model_file is None and source.run is not None and running_pid(source.run) is not None:
        _note(f"warning: {source.run.path} is still training; this scores its best model so far")


@main.command(short_help="Classify image files, folders or globs.")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--run",
    "run_ref",
    metavar="RUN",
    help="Run whose model to use (default: the latest run with a model).",
)
@click.option(
    "--model",
    "model_file",
    type=click.Path(path_type=Path),
    help="A .keras, .onnx or .tflite file instead of a run.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Classes shown per image (default 3; multilabel: every label above its threshold).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=EVAL_BATCH,
    show_default=True,
    help="Images per model call (lower it if memory runs out).",
)
@click.option("--invert", is_flag=True, help="For dark-on-light images (MNIST is light on dark).")
@tta_option
@legacy_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "csv"]),
    default=None,
    help="table (the default on screen), json or csv.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Write the results to a file (.json, else CSV); segmentation: a folder of masks.",
)
@json_option
@global_options
@click.pass_context
def predict(
    ctx: click.Context,
    paths: tuple[str, ...],
    run_ref: str | None,
    model_file: Path | None,
    top_k: int | None,
    batch_size: int,
    invert: bool,
    tta: str | None,
    legacy_h5: bool,
    output_format: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Classify image files, folders or globs with a run's best model."""
    if as_json and output_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {output_format} disagree; give one of them")
    source = _scoring_source(run_ref, model_file, tta, legacy_h5)
    if model_file is None:
        _note(f"predicting with {source.model_file}")
    with _stdout_for_json(as_json):
        if not source.exported:  # .onnx and .tflite run without TensorFlow
            _tensorflow()
        from cnnctl.scoring.predict import predict_images

        result = predict_images(source, list(paths), top_k, batch_size, invert)
    for path, reason in result.failures:
        _note(f"{path}: {reason}")
    if not result.items:
        from cnnctl.errors import DataError

        raise DataError(
            "no image could be read", "pass PNG or JPEG files, folders of them, or globs"
        )
    if output is not None and source.task.spatial_output:  # outputs are images: files of them
        from cnnctl import report
        from cnnctl.scoring.masks import write_masks

        classes = (
            len(source.names) if source.names else 1 + max(int(i.mask.max()) for i in result.items)
        )
        written = write_masks(result, output, classes)
        _note(f"wrote {report.plural(len(written) // 2, 'mask')} and overlays to {output}")
        output = None
    _show_predictions(result, paths, output, "json" if as_json else output_format)
    if result.failures:
        from cnnctl import report

        _note(f"{report.plural(len(result.failures), 'unreadable file')}")
        ctx.exit(1)


def _show_predictions(result, paths: tuple[str, ...], output: Path | None, fmt: str | None) -> None:
    """On screen (a table, or JSON / CSV on stdout), or into the file `output`."""
    from cnnctl import report

    rows = [p.to_json() for p in result.items]
    if output is not None:
        from cnnctl.runs import write_text

        if output.is_dir():
            raise click.UsageError(f"--output {output}: is a folder; give a file name")
        fmt = fmt or ("json" if output.suffix == ".json" else "csv")
        if fmt == "table":
            raise click.UsageError(
                "--output writes data: use --format csv or json (or a .json name)"
            )
        text = report.predictions_csv(result.items) if fmt == "csv" else json.dumps(rows, indent=2)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text(output, text)
        _note(f"wrote {report.plural(len(result.items), 'prediction')} to {output}")
    elif fmt == "csv":
        click.echo(report.predictions_csv(result.items), nl=False)
    else:
        console = _console()
        base = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else None
        table = report.predictions_table(result.items, _width(console), base, result.columns)
        _render(table, rows, fmt == "json", console)


@main.command("explain", short_help="Show where the model looked: Grad-CAM and other maps.")
@click.argument("paths", nargs=-1)
@click.option("--run", "run_ref", metavar="RUN", help="Run whose model to use (default: latest).")
@click.option("--model", "model_file", type=click.Path(path_type=Path), help="A model file.")
@click.option(
    "--method",
    type=click.Choice(EXPLAIN_METHODS),
    default="gradcam",
    show_default=True,
    help="Map method; only occlusion works on .onnx/.tflite files.",
)
@click.option("--class", "chosen", metavar="NAME", help="Explain this output (default: predicted).")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Explain the K most probable classes (default: the predicted class; multilabel: "
    "every label above its threshold).",
)
@click.option("--layer", metavar="NAME", help="Convolution to read Grad-CAM at (default: last).")
@click.option(
    "--layers",
    "feature_maps",
    is_flag=True,
    help="Instead: every convolution's feature maps and the first filters for one image.",
)
@click.option("--image", type=click.Path(path_type=Path), help="The image for --layers.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the figures (default: the run's explain/).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPLAIN_FORMATS),
    default="png",
    show_default=True,
    help="Besides each overlay PNG: npy (raw map) or explain.json.",
)
@click.option("--invert", is_flag=True, help="For dark-on-light images (MNIST is light on dark).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=EVAL_BATCH,
    show_default=True,
    help="Images per model call (lower it if memory runs out).",
)
@legacy_option
@json_option
@global_options
@click.pass_context
def explain_command(
    ctx: click.Context,
    paths: tuple[str, ...],
    run_ref: str | None,
    model_file: Path | None,
    method: str,
    chosen: str | None,
    top_k: int | None,
    layer: str | None,
    feature_maps: bool,
    image: Path | None,
    output: Path | None,
    fmt: str,
    invert: bool,
    batch_size: int,
    legacy_h5: bool,
    as_json: bool,
) -> None:
    """Maps of the pixels that made the model's output, one overlay PNG per image and output."""
    source = _scoring_source(run_ref, model_file, "none", legacy_h5)
    if model_file is None:
        _note(f"explaining {source.model_file}")
    from cnnctl.scoring import explain as explaining

    if feature_maps:
        shown = image or (Path(paths[0]) if paths else None)
        with _stdout_for_json(as_json):
            _tensorflow()
            offline = bool(_setting("offline"))
            saved = explaining.feature_figure(source, shown, output, invert, offline)
        return _render(f"wrote {saved}", {"features": str(saved)}, as_json)
    if not paths:
        raise click.UsageError("give image files, folders or globs to explain (or --layers)")
    explaining.check_method(source, method, layer)
    with _stdout_for_json(as_json):
        if not source.exported:
            _tensorflow()
        result = explaining.explain_images(
            source, list(paths), method, chosen, top_k, layer, output, fmt, invert, batch_size
        )
    for path, reason in result.failures:
        _note(f"{path}: {reason}")
    if not result.items:
        from cnnctl.errors import DataError

        raise DataError(
            "no image could be read", "pass PNG or JPEG files, folders of them, or globs"
        )
    from cnnctl import report

    _render(
        report.explain_table(result.items, result.folder),
        [i.to_json() for i in result.items],
        as_json,
    )
    if result.failures:
        _note(f"{report.plural(len(result.failures), 'unreadable file')}")
        ctx.exit(1)


@main.command(short_help="Export a run's model to SavedModel, ONNX or TFLite.")
@click.argument("run", required=False)
@click.option(
    "--model",
    "model_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .keras file instead of a run (its run folder supplies the check's data).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--quantize", type=click.Choice(QUANTIZE), help="TFLite only: smaller weights.")
@click.option(
    "--output", type=click.Path(path_type=Path), help="Where to write (default: RUN/export/)."
)
@json_option
@global_options
def export(
    run: str | None,
    model_file: Path | None,
    fmt: str,
    quantize: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Export RUN's model (default: the latest run) for serving, checked against Keras first."""
    from cnnctl.runs import find_run
    from cnnctl.scoring.export import check_request, export_source

    if run is not None and model_file is not None:
        raise click.UsageError("give a RUN or --model FILE, not both")
    check_request(fmt, quantize, output)
    source = export_source(
        None if model_file else find_run(run, _setting("runs_dir"), with_model=True), model_file
    )
    if model_file is None:
        _note(f"exporting {source.model}")
    with _stdout_for_json(as_json):
        _tensorflow()
        from cnnctl.scoring.export import export_model, export_table

        record = export_model(
            source, fmt, quantize, output, bool(_setting("verbose")), bool(_setting("offline"))
        )
    _render(export_table(record), record, as_json)


@main.command(short_help="Serve a model over HTTP: predictions, metrics and a page.")
@click.argument("run", required=False)
@click.option(
    "--model",
    "model_file",
    type=click.Path(path_type=Path),
    help="A .keras, .onnx or .tflite file instead of a run.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="0: any free port.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, EVAL_BATCH),
    default=32,
    show_default=True,
    help="Images scored together at most.",
)
@click.option(
    "--max-latency-ms",
    type=click.FloatRange(0, 1000),
    default=5.0,
    show_default=True,
    help="How long a request waits for others to batch with.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Images waiting at most; beyond, 503.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Threads running the model.",
)
@click.option(
    "--api-key",
    envvar="CNNCTL_API_KEY",
    help="Require this key (X-API-Key header) on /v1/* and /metrics; "
    "$CNNCTL_API_KEY keeps it out of ps.",
)
@tta_option
@legacy_option
@global_options
def serve(
    run: str | None,
    model_file: Path | None,
    host: str,
    port: int,
    max_batch_size: int,
    max_latency_ms: float,
    max_queue: int,
    workers: int,
    api_key: str | None,
    tta: str | None,
    legacy_h5: bool,
) -> None:
    """Serve RUN's model (default: the latest run; its checked ONNX export where there is one)
    or --model FILE over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics,
    and a page at /. Listens on 127.0.0.1 unless --host says otherwise."""
    from cnnctl.serve import require_serve_extra  # before anything imports FastAPI

    require_serve_extra()
    from cnnctl.serve.model import served_source

    source = served_source(_scoring_source(run, model_file, tta, legacy_h5), model_file is not None)
    if not source.exported:  # .onnx and .tflite run without TensorFlow
        _tensorflow()
    from cnnctl.serve.app import ServeOptions
    from cnnctl.serve.model import load_served
    from cnnctl.serve.server import run_server

    options = ServeOptions(max_batch_size, max_latency_ms, max_queue, workers, api_key or None)
    run_server(load_served(source, max_batch_size), host, port, options, _note)


@main.command(short_help="List the runs and tune studies, with results.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), required=False)
@json_option
@global_options
def runs(folder: Path | None, as_json: bool) -> None:
    """List the runs in FOLDER (default: --runs-dir, runs/ or $CNNCTL_RUNS_DIR) with progress
    and results."""
    from cnnctl import report
    from cnnctl.errors import RunError
    from cnnctl.runs import FIRST_CONFIG, describe, describe_study, list_runs, list_studies

    if folder is not None and not folder.is_dir():
        raise RunError(f"{folder}: no such folder", "give the folder that holds your run folders")
    folder = folder or _setting("runs_dir")
    found = [describe(run) for run in list_runs(folder)]
    studies = [describe_study(path) for path in list_studies(folder)]
    if not found and not studies:
        _note(f"no runs in {folder}/ yet; start one with: cnnctl train {FIRST_CONFIG}")
    console = _console()
    listing = report.runs_listing(found, studies, _width(console))
    _render(listing, [r.to_json() for r in [*found, *studies]], as_json, console)


@main.command(short_help="Compare runs: results, config differences, curves overlaid.")
@click.argument("refs", nargs=-1, required=True, metavar="RUN RUN...")
@click.option("--metric", help="The metric whose curves to overlay (default: the task's headline).")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for compare.png and compare.json (default: RUNS_DIR/compare).",
)
@json_option
@global_options
def compare(refs: tuple[str, ...], metric: str | None, output: Path | None, as_json: bool) -> None:
    """Compare RUNs (names or paths; a study folder of `cnnctl tune` gives its finished trials):
    each run's results, the config paths that differ, and their curves in compare.png."""
    from cnnctl.review.compare import compare_runs, comparison_view, resolve_runs

    runs = resolve_runs(refs, _setting("runs_dir"))
    result = compare_runs(runs, metric, output or _setting("runs_dir") / "compare")
    console = _console()
    _render(comparison_view(result, _width(console)), result.to_json(), as_json, console)


@main.command("report", short_help="One self-contained HTML page of a run.")
@click.argument("run", required=False)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write (default: RUN/report.html).",
)
@global_options
def report_command(run: str | None, output: Path | None) -> None:
    """Write RUN's config, curves, evaluation, explanations and export checks (default: the latest
    run) into one HTML file with its images inside: it opens offline, from a mail or a CI."""
    from cnnctl.review.page import write_report
    from cnnctl.runs import find_run

    written = write_report(find_run(run, _setting("runs_dir")), output)
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")


@main.group(short_help="Experiment tracking (MLflow): send what is pending.")
def track() -> None:
    """Runs trained with --track mlflow (train.track: mlflow) are logged to MLflow when they end;
    a run the server did not take waits in its folder for `cnnctl track sync`."""


@track.command("sync")
@click.argument("refs", nargs=-1, metavar="[RUN]...")
@global_options
def track_sync(refs: tuple[str, ...]) -> None:
    """Send RUNs (default: every pending run in --runs-dir, tune trials too) to MLflow
    (MLFLOW_TRACKING_URI, else where each was meant to go); a run already sent gets its
    files again, an evaluation made since included."""
    from cnnctl.escape import safe_text
    from cnnctl.runs import find_run
    from cnnctl.track import need_mlflow
    from cnnctl.track.mlflow_log import pending_runs, sync_run

    need_mlflow()
    root = _setting("runs_dir")
    runs = [find_run(ref, root) for ref in refs] if refs else pending_runs(root)
    if not runs:
        _note(f"nothing pending in {root}/")
    for run in runs:
        record = sync_run(run)
        click.echo(safe_text(f"sent {run.path} to {record['uri']} (run id {record['run_id']})"))


@main.command(short_help="Versions, devices and data paths, for bug reports.")
@json_option
@global_options
def info(as_json: bool) -> None:
    """Versions, devices, the strategy `auto` picks, and where data is looked for: for bug
    reports."""
    _tensorflow()
    import platform

    import keras
    import tensorflow as tf

    from cnnctl import report
    from cnnctl.data.sources import BUILTINS, builtin_candidates
    from cnnctl.model.builder import mixed_policy
    from cnnctl.startup import cluster
    from cnnctl.training.distribute import auto_strategy_name

    facts = {
        "cnnctl": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": [
            f"{d.device_type}:{d.name.split(':')[-1]}" for d in tf.config.list_physical_devices()
        ],
        "auto strategy": auto_strategy_name(),
        "TF_CONFIG": cluster(),
        "precision": "float32 (the default); precision: mixed would use "
        + (mixed_policy() or "float32 too (no bfloat16 or float16 support here)"),
        "data dir": os.environ.get("CNNCTL_DATA_DIR") or "(CNNCTL_DATA_DIR not set)",
        "data lookup": {name: [str(p) for p in builtin_candidates(name)] for name in BUILTINS},
        "offline": bool(_setting("offline")),
        "runs dir": str(_setting("runs_dir")),
    }
    _render(report.facts_table(facts), facts, as_json)


@main.group(invoke_without_command=True, short_help="List built-in datasets; check or make data.")
@json_option
@global_options
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """List the built-in datasets and where each one was found."""
    if ctx.invoked_subcommand is not None:
        return
    from cnnctl import report
    from cnnctl.data.sources import BUILTINS, find_builtin

    offline = bool(_setting("offline"))
    rows = [
        {
            "name": b.name,
            "shape": list(b.shape),
            "classes": len(b.classes),
            "found": str(find_builtin(b.name) or ""),
            "fallback": "not found (offline)" if offline else "would be downloaded by Keras",
        }
        for b in BUILTINS.values()
    ]
    _render(report.datasets_table(rows), rows, as_json)


@datasets.command("check")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@json_option
@global_options
def datasets_check(config: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check CONFIG's data: images per class and split, leakage between splits, unreadable files."""
    from cnnctl.config import load_config

    cfg = load_config(config, overrides)
    _tensorflow()
    from dataclasses import asdict

    from cnnctl import report
    from cnnctl.data.checks import check_dataset
    from cnnctl.data.dataset import dataset_for
    from cnnctl.tasks import task_of

    with _stdout_for_json(as_json):
        checks = check_dataset(dataset_for(cfg, bool(_setting("offline"))), task_of(cfg))
    _render(report.checks_table(checks), asdict(checks), as_json)


@datasets.command("make")
@click.argument("name", type=click.Choice(["fashion-scenes"]))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--count",
    type=click.IntRange(1, 100_000),
    default=6000,
    show_default=True,
    help="Train scenes.",
)
@click.option(
    "--test-count",
    type=click.IntRange(1, 100_000),
    help="Test scenes (default: a sixth of --count).",
)
@click.option(
    "--size",
    type=click.IntRange(60, 512),
    default=64,
    show_default=True,
    help="Width and height of a scene, pixels.",
)
@click.option("--seed", type=int, default=42, show_default=True)
@global_options
def datasets_make(
    name: str, folder: Path, count: int, test_count: int | None, size: int, seed: int
) -> None:
    """Make a derived dataset in FOLDER (new or empty): fashion-scenes are 1-3 Fashion-MNIST items
    per scene, with tags and item count in labels.csv and segmentation masks in masks/."""
    from cnnctl.data.scenes import make_scenes
    from cnnctl.escape import safe_text

    test_count = test_count or max(1, count // 6)
    made = make_scenes(folder, count, test_count, size, seed, bool(_setting("offline")))
    for warning in made.warnings:
        _note(f"warning: {warning}")
    click.echo(
        safe_text(
            f"wrote {count:,} train + {test_count:,} test scenes of {size}x{size} "
            f"(from {made.origin}) to {folder}/: images/, masks/, labels.csv, classes.txt"
        )
    )


def _render(renderable, data, as_json: bool, console=None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        (console or _console()).print(renderable)


if __name__ == "__main__":
    sys.exit(main())
