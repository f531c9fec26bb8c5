"""Send a finished run folder to MLflow: its resolved config as params, every epoch of
metrics.csv as metrics at its step, the test results, and its files as artifacts.

Everything sent is read back from the run folder, so what could not be sent (a server down,
slow or refusing) needs nothing kept but a note: `track.json` says "pending", and
`cnnctl track sync RUN` sends the same folder later. MLflow is imported here only, inside the
functions: training without `train.track` never loads it, and no failure of it stops a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cnnctl.config import Config, load_config
from cnnctl.config.paths import flatten
from cnnctl.errors import CnnctlError, RunError, first_line
from cnnctl.limits import inside, is_regular
from cnnctl.runs import Run, epoch_rows, write_json
from cnnctl.tasks import task_named

TRACK_FILE = "track.json"  # what was sent where, or what is still to send
PARENT_ENV = "CNNCTL_TRACK_PARENT"  # a tune study's MLflow run: its trials nest under it
EXPERIMENT = "cnnctl"  # unless MLFLOW_EXPERIMENT_NAME names another
LEFT_OUT = {TRACK_FILE, "report.html"}  # files of the run folder not sent as artifacts
FOLDERS = ("export", "explain")  # sub-folders sent as artifacts (not checkpoints/)
# A server that is down or slow must not hold a finished run: one try, short waits.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
SEND_SECONDS = 120  # a server that answers, but slowly: the rest waits for `track sync`

Warn = Callable[[str], None]


def tracking_uri(runs_root: Path) -> str:
    """MLFLOW_TRACKING_URI, else a local store in RUNS_DIR/mlruns (SQLite: MLflow 3 keeps the
    plain file store only behind MLFLOW_ALLOW_FILE_STORE)."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    return given or f"sqlite:///{(runs_root / 'mlruns' / 'mlflow.db').resolve()}"


def shown_uri(uri: str) -> str:
    """The URI without a user name or password, for messages and track.json."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def _client(uri: str) -> Any:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in (
        "mlflow",
        "alembic",
    ):  # their INFO lines (creating tables, run links): stderr noise
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, uri: str, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # a local store keeps its files beside its database
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


def param_text(value: Any) -> str:
    """A config value as an MLflow param: text as it is, anything else as JSON (`[3, 3]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def params_of(config: Config) -> dict[str, str]:
    """The resolved config, flattened into dotted paths (`model.layers.0.filters`)."""
    data = flatten(config.model_dump(mode="json", exclude_none=True))
    return {key: param_text(value) for key, value in data.items()}


def send_run(run: Run, uri: str, experiment: str, parent: str | None) -> str:
    """Log the run folder as one MLflow run; returns its id. Raises whatever MLflow raises."""
    from mlflow.entities import Metric, Param

    config = load_config(run.effective_config)
    client = _client(uri)
    tags = {"mlflow.runName": run.name, "cnnctl.run": str(run.path.resolve())}
    tags["cnnctl.task"] = config.task
    tags["cnnctl.headline"] = "test_" + task_named(config.task).headline[0]
    if parent:
        tags["mlflow.parentRunId"] = parent
    created = client.create_run(_experiment(client, uri, experiment), tags=tags)
    run_id = created.info.run_id
    try:
        params = [Param(k, v) for k, v in params_of(config).items()]
        deadline = time.monotonic() + SEND_SECONDS
        for chunk in _chunks(params, 100):  # MLflow takes at most 100 params a call
            _in_time(deadline)
            client.log_batch(run_id, params=chunk)
        metrics = [Metric(k, v, ms, step) for k, v, ms, step in _metrics(run)]
        for chunk in _chunks(metrics, 1000):
            _in_time(deadline)
            client.log_batch(run_id, metrics=chunk)
        send_artifacts(client, run, run_id, deadline)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):  # what reached the server is not a whole run
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def send_artifacts(client: Any, run: Run, run_id: str, deadline: float | None = None) -> int:
    """The run folder's files (model, curves, metrics, evaluation, export, explain)."""
    deadline = deadline or time.monotonic() + SEND_SECONDS
    sent = 0
    for path in sorted(run.path.iterdir()):
        if path.name.startswith(".") or path.name in LEFT_OUT or not inside(run.path, path):
            continue
        _in_time(deadline)
        if is_regular(path):
            client.log_artifact(run_id, str(path))
            sent += 1
        elif path.is_dir() and path.name in FOLDERS:
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
            sent += 1
    return sent


def _in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"MLflow took over {SEND_SECONDS} s; the rest is left for later")


def _metrics(run: Run) -> Iterator[tuple[str, float, int, int]]:
    """(name, value, time in ms, step): each epoch's row at its step, then the test results
    at the last epoch's step."""
    started = run.status_field("started")
    clock = float(started) * 1000 if isinstance(started, (int, float)) else time.time() * 1000
    step = 0
    for row in epoch_rows(run):
        clock += row.get("seconds", 0.0) * 1000
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and math.isfinite(value):
                yield key, value, int(clock), step
    with contextlib.suppress(CnnctlError):
        finished = run.read_json(run.metrics_json)
        test = finished.get("test") if isinstance(finished, dict) else None
        for key, value in (test or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                yield f"test_{key}", float(value), int(clock), step


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- the record


def record_of(run: Run) -> dict[str, Any] | None:
    """track.json of a run, or None where the run was never tracked."""
    path = run.path / TRACK_FILE
    if not path.exists():
        return None
    data = run.read_json(path)
    if not isinstance(data, dict) or data.get("backend") != "mlflow":
        raise RunError(f"{path}: not a cnnctl tracking record", "remove it to start afresh")
    return data


def track_run(run: Run, runs_root: Path, warn: Warn) -> dict[str, Any]:
    """After a run finished: send it, or leave it pending with a warning. Never raises."""
    uri = tracking_uri(runs_root)
    record = {
        "backend": "mlflow",
        "uri": shown_uri(uri),
        "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT,
        "parent": os.environ.get(PARENT_ENV) or None,
        "status": "pending",  # written first: a kill while sending leaves it sendable
        "run_id": None,
    }
    with contextlib.suppress(OSError):
        write_json(run.path / TRACK_FILE, record)
    try:
        record["run_id"] = send_run(run, uri, record["experiment"], record["parent"])
        record["status"], record["sent"] = "sent", time.time()
    except Exception as error:  # tracking never breaks a finished run
        record["error"] = first_line(error)[:500]
        warn(
            f"MLflow at {shown_uri(uri)}: could not log {run.path} ({record['error'][:200]}); "
            f"the run is kept, send it later with: cnnctl track sync {run.path}"
        )
    with contextlib.suppress(OSError):
        write_json(run.path / TRACK_FILE, record)
    return record


def sync_run(run: Run) -> dict[str, Any]:
    """Send a pending run (MLFLOW_TRACKING_URI, else where it was meant to go); a run already
    sent gets its files sent again (an evaluation made since). Raises `RunError` on failure."""
    record = record_of(run)
    if record is None:
        raise RunError(
            f"{run.path}: was not tracked (no {TRACK_FILE})",
            "train with --track mlflow (or train.track: mlflow) to track a run",
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI") or str(record.get("uri") or "")
    try:
        if record.get("status") == "sent" and record.get("run_id"):
            client = _client(uri)
            record["artifacts"] = send_artifacts(client, run, str(record["run_id"]))
        else:
            parent = record.get("parent") if isinstance(record.get("parent"), str) else None
            record["run_id"] = send_run(run, uri, str(record.get("experiment")), parent)
            record["status"] = "sent"
            record.pop("error", None)
        record["sent"], record["uri"] = time.time(), shown_uri(uri)
    except CnnctlError:
        raise
    except Exception as error:  # the server's failure, in one line
        raise RunError(
            f"{run.path}: MLflow at {shown_uri(uri)} did not take it ({first_line(error)[:200]})",
            "start the server (or set MLFLOW_TRACKING_URI), then run cnnctl track sync again",
        ) from None
    write_json(run.path / TRACK_FILE, record)
    return record


# --------------------------------------------------------------------------- tune studies


def open_parent(study: str, folder: Path, runs_root: Path, warn: Warn) -> str | None:
    """The MLflow run a tune study's trials nest under: the study's own from an earlier
    round of the same study (its folder's track.json), else a new one. The trial processes
    find it (and the store) in their environment. None, with a warning, where MLflow fails."""
    uri = tracking_uri(runs_root)
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)  # the trials log to the study's store
    path = folder / TRACK_FILE
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    with contextlib.suppress(OSError, ValueError, AttributeError):
        earlier = json.loads(path.read_text())
        if earlier.get("uri") == shown_uri(uri) and isinstance(earlier.get("run_id"), str):
            os.environ[PARENT_ENV] = earlier["run_id"]
            return earlier["run_id"]
    try:
        client = _client(uri)
        tags = {"mlflow.runName": study, "cnnctl.study": str(folder.resolve())}
        run_id = client.create_run(_experiment(client, uri, experiment), tags=tags).info.run_id
    except Exception as error:  # trials are still tracked, each on its own
        warn(f"MLflow at {shown_uri(uri)}: no parent run for study {study} ({first_line(error)})")
        return None
    record = {"backend": "mlflow", "uri": shown_uri(uri), "experiment": experiment}
    write_json(path, {**record, "status": "sent", "run_id": run_id})
    os.environ[PARENT_ENV] = run_id
    return run_id


def close_parent(run_id: str | None, folder: Path, best: dict[str, Any], status: str) -> None:
    """End a study's parent run with its best value (`best`: metric name -> value)."""
    if run_id is None:
        return
    with contextlib.suppress(Exception):  # the trials are logged already; this is a summary
        from mlflow.entities import Metric

        client = _client(tracking_uri(folder.parent))
        now = int(time.time() * 1000)
        metrics = [Metric(f"best_{k}", float(v), now, 0) for k, v in best.items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        for name in ("trials.csv", "best.yaml", "history.png", "importances.png"):
            if is_regular(folder / name) and inside(folder, folder / name):
                client.log_artifact(run_id, str(folder / name))
        client.set_terminated(run_id, status)


def pending_runs(root: Path) -> list[Run]:
    """Runs under `root`, and trials of its studies, whose track.json is still pending."""
    from cnnctl.runs import list_runs, list_studies

    found = []
    for run in [*list_runs(root), *(r for s in list_studies(root) for r in list_runs(s))]:
        with contextlib.suppress(CnnctlError):
            record = record_of(run)
            if record is not None and record.get("status") != "sent":
                found.append(run)
    return found
