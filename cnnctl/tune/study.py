"""`cnnctl tune`: an Optuna study whose trials are ordinary run folders.

The trials are trained by worker processes.

    runs/<study>/  journal.log  trials.csv  best.yaml  history.png  importances.png
                   trial-000/  trial-001/  ...      (run folders, as `cnnctl train` makes them)

This process checks the search space, opens the study, starts the workers
(`python -m cnnctl.tune.worker`), prints a line per finished trial and writes the
study's files. Workers meet only in Optuna's storage: the journal file here, or an
RDB that several machines share by running the same command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from cnnctl.config import NAME_PATTERN, Config, TuneConfig, changed_paths, duration_seconds
from cnnctl.errors import CnnctlError, ConfigError, Interrupted, TrainingFailed, first_line
from cnnctl.limits import open_regular, parse_json, refuse_over
from cnnctl.runs import pid_alive
from cnnctl.tune.report import TuneResult, Watcher, save_plots
from cnnctl.tune.space import base_data, check_space, grid

HOST = socket.gethostname()
STUDY_NAME = re.compile(NAME_PATTERN)  # a folder under --runs-dir, named as runs are
HEARTBEAT_SECONDS = 30  # RDB storage: a trial not heard of for 3x this long is marked failed
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class TuneOptions:
    """What the command line adds to the config's `tune:` section."""

    config_file: Path
    overrides: tuple[str, ...] = ()
    study: str | None = None
    trials: int | None = None
    workers: int = 1
    storage: str | None = None
    runs_dir: Path = Path("runs")
    verbose: bool = False
    offline: bool = False

    def resume_command(self, study: str) -> str:
        """The command that continues this study."""
        words = ["cnnctl", "tune", str(self.config_file), "--name", study]
        for text in self.overrides:
            words += ["--set", text]
        words += ["--trials", str(self.trials)] if self.trials else []
        words += ["--workers", str(self.workers)] if self.workers != 1 else []
        words += ["--storage", self.storage] if self.storage else []
        words += ["--runs-dir", str(self.runs_dir)] if self.runs_dir != Path("runs") else []
        return shlex.join(words)


# --------------------------------------------------------------------------- optuna and storage


def load_optuna() -> Any:
    """Optuna, imported on first use (an optional dependency), quiet."""
    try:
        import optuna
    except ImportError:
        raise CnnctlError("cnnctl tune needs Optuna", 'pip install "cnnctl[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str | None, folder: Path) -> Any:
    """The journal file in the study folder, or the RDB at `url` (with a heartbeat)."""
    optuna = load_optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        journal = folder / "journal.log"
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(journal).st_mode):
                raise CnnctlError(
                    f"{journal}: not a regular file", "move it away; it should hold the study"
                )
            vet_journal(journal)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS
        )
    except Exception as error:  # SQLAlchemy: a bad URL, a missing driver, a server that is down
        raise CnnctlError(
            f"--storage {_hide_password(url)}: cannot open it ({first_line(error)})",
            "give an RDB URL such as postgresql://user:password@host/db "
            "(its driver installed: psycopg2, pymysql)",
        ) from None


def vet_journal(journal: Path) -> None:
    """Read a study's journal once, defensively, before Optuna does (it reads it whole).

    Its size is checked against `journal_bytes` first; then every line must be a JSON object
    of Optuna's (no garbage, no line cut short, no 5,000-digit number, no deep nesting).
    """
    hint = "move it away (or use --name NEW) to start the study afresh"
    with open_regular(journal, CnnctlError) as stream:
        size = os.fstat(stream.fileno()).st_size
        refuse_over("journal_bytes", size, str(journal), "the tune journal is too large")
        for number, line in enumerate(stream, start=1):
            if not line.endswith(b"\n"):
                raise CnnctlError(
                    f"{journal}:{number}: damaged tune journal (a line cut short)", hint
                )
            where = f"{journal}:{number}"
            try:
                entry = parse_json(line, where, CnnctlError)
            except CnnctlError as error:
                why = error.message[len(where) + 2 :]
                raise CnnctlError(f"{where}: damaged tune journal ({why})", hint) from None
            if not isinstance(entry, dict) or not isinstance(entry.get("op_code"), int):
                raise CnnctlError(
                    f"{journal}:{number}: damaged tune journal (not an Optuna record)", hint
                )


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def fingerprint(config: Config) -> dict[str, Any]:
    """What must stay the same for trials to belong to one study (the trial budget may change)."""
    data = base_data(config)
    data.pop("name", None)
    tune = config.tune.model_dump(mode="json", exclude={"trials", "timeout"}) if config.tune else {}
    return {"config": data, "tune": tune}


def check_fingerprint(study: Any, config: Config, file: str) -> None:
    """Refuse to mix trials of different configs in one study."""
    saved = study.user_attrs.get("cnnctl")
    mine = fingerprint(config)
    if saved is None:
        study.set_user_attr("cnnctl", mine)
    elif saved != mine:
        changed = list(changed_paths(saved, mine))
        raise ConfigError(
            f"{file}: differs from the config study '{study.study_name}' was started with "
            f"(in {', '.join(changed[:3]) or 'its layout'})",
            "use the study's config to continue it, or --name NEW to start another study",
        )


def fail_dead_trials(study: Any, storage: Any) -> list[int]:
    """Mark failed the running trials whose process is gone: here by pid, elsewhere by heartbeat."""
    optuna = load_optuna()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    dead = [
        t
        for t in running
        if t.user_attrs.get("host") == HOST and not pid_alive(t.user_attrs.get("pid"))
    ]
    failed = []
    if dead:
        study_id = storage.get_study_id_from_name(study.study_name)
    for trial in dead:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial_id, "killed", True)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    optuna.storages.fail_stale_trials(study)  # RDB: trials whose heartbeat stopped, on any machine
    return failed


def counts(study: Any) -> tuple[int, int]:
    """(trials that count as done, trials running): killed or interrupted ones are redone."""
    done = running = 0
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state in ("COMPLETE", "PRUNED") or (state == "FAIL" and "error" in trial.user_attrs):
            done += 1
        elif state == "RUNNING":
            running += 1
    return done, running


def make_sampler(tune: TuneConfig, seed: int) -> Any:
    optuna = load_optuna()
    samplers = optuna.samplers
    if tune.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if tune.sampler == "grid":
        return samplers.GridSampler(grid(tune), seed=seed)
    if tune.sampler == "cmaes":
        return samplers.CmaEsSampler(n_startup_trials=tune.startup_trials, seed=seed)
    # constant_liar: parallel workers do not all sample next to the same running trial
    return samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=seed, constant_liar=True)


def make_pruner(tune: TuneConfig, epochs: int) -> Any:
    pruners = load_optuna().pruners
    if tune.pruner == "median":
        return pruners.MedianPruner(n_startup_trials=tune.startup_trials)
    if tune.pruner == "hyperband":
        return pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return pruners.NopPruner()


# --------------------------------------------------------------------------- the study


def _track_parent(
    config: Config, name: str, folder: Path, runs_dir: Path, console: Console
) -> str | None:
    """With train.track: mlflow, the study's MLflow run, which its trials nest under."""
    if config.train.track != "mlflow":
        return None
    from cnnctl.track import need_tracker
    from cnnctl.track.mlflow_log import open_parent

    need_tracker(config)

    def warn(message: str) -> None:
        console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)

    return open_parent(name, folder, runs_dir, warn)


def run_study(config: Config, options: TuneOptions, console: Console) -> TuneResult:
    """Check the search space, then run trials in worker processes until the study has enough."""
    optuna = load_optuna()
    check_space(config)
    tune = config.tune
    if tune.sampler == "cmaes" and not _has("cmaes"):
        raise ConfigError(
            f"{config.where(('tune', 'sampler'))}: the cmaes sampler needs the cmaes package",
            "pip install cmaes, or use sampler: tpe",
        )
    name = options.study or f"{config.name}-tune"
    if not STUDY_NAME.match(name):
        raise CnnctlError(
            f"--name {name!r}: a study name is letters, digits, '.', '_' and '-'",
            "for example --name mnist-lr",
        )
    folder = _study_folder(options.runs_dir / name)
    storage = open_storage(options.storage, folder)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=tune.direction, load_if_exists=True
        )
    except ValueError as error:  # a study of the same name with another direction (or several)
        raise ConfigError(
            f"{config.where(('tune', 'metric'))}: study '{name}' exists: {first_line(error)}",
            "use --name NEW for a study with another goal",
        ) from None
    if study.direction.name.lower() != tune.direction:
        raise ConfigError(
            f"{config.where(('tune', 'metric'))}: study '{name}' was started to "
            f"{study.direction.name.lower()}, this config asks to {tune.direction}",
            "use --name NEW for a study with another goal",
        )
    check_fingerprint(study, config, str(options.config_file))
    target = options.trials or tune.trials
    if tune.sampler == "grid":
        target = min(target, _grid_size(tune))
    deadline = time.time() + duration_seconds(tune.timeout) if tune.timeout else None
    watcher = Watcher(
        study, config, name, folder, console, options.config_file, tuple(options.overrides)
    )
    parent = _track_parent(config, name, folder, options.runs_dir, console)
    killed = fail_dead_trials(study, storage)
    done, running = counts(study)
    console.print(
        Text(
            f"study {name} in {folder}: {done} of {target} trials done"
            + (f", {running} running elsewhere" if running else "")
            + (f"; killed trials marked failed: {killed}" if killed else "")
        ),
        soft_wrap=True,
    )
    interrupted, bad_codes = False, []
    while not interrupted and not bad_codes:
        fail_dead_trials(study, storage)
        done, running = counts(study)
        if done + running >= target or (deadline and time.time() >= deadline):
            break
        workers = _spawn(
            min(options.workers, target - done - running),
            options,
            config,
            name,
            folder,
            target,
            deadline,
            len(study.get_trials(deepcopy=False)),
        )
        codes, interrupted = _watch(workers, watcher)
        bad_codes = [
            (code, _worker_error(folder / f"worker-{i}.log"))
            for i, code in enumerate(codes)
            if code not in (0, 130) and code > 0
        ]
        interrupted = interrupted or 130 in codes
        if (
            counts(study)[0] == done
        ):  # no progress in a whole round: do not start the same failure again
            break
    fail_dead_trials(study, storage)
    watcher.poll()
    result = watcher.result(target)
    result.notes += save_plots(study, folder, tune.metric)
    done = counts(study)[0]
    if parent is not None:
        from cnnctl.track.mlflow_log import close_parent

        value = (result.best or {}).get("value")
        best = {tune.metric: value} if isinstance(value, (int, float)) else {}
        close_parent(parent, folder, best, "KILLED" if interrupted or bad_codes else "FINISHED")
    if interrupted:
        raise Interrupted(
            f"stopped; {done} of {target} trials are done in {folder}",
            f"resume with: {options.resume_command(name)}",
        )
    if bad_codes:
        code, message = bad_codes[0]
        raise TrainingFailed(
            f"a tune worker stopped with exit code {code}: {message}",
            f"fix that, then resume with: {options.resume_command(name)}",
        )
    if done < target:
        why = (
            f"the timeout ({tune.timeout}) passed"
            if deadline and time.time() >= deadline
            else "stopped"
        )
        result.notes.append(
            f"{why} with {done} of {target} trials done; continue with: "
            f"{options.resume_command(name)}"
        )
    return result


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _grid_size(tune: TuneConfig) -> int:
    size = 1
    for values in grid(tune).values():
        size *= len(values)
    return size


def _study_folder(folder: Path) -> Path:
    if (folder / "config.yaml").is_file():
        raise CnnctlError(
            f"{folder}: is a run folder, not a study folder",
            "pass --name to choose another study name",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnctlError(
            f"{folder}: cannot create the study folder ({error.strerror})",
            "choose a writable folder with --runs-dir",
        ) from None
    return folder


def _spawn(
    count: int,
    options: TuneOptions,
    config: Config,
    name: str,
    folder: Path,
    target: int,
    deadline: float | None,
    known: int,
) -> list[subprocess.Popen]:
    """Start `count` worker processes, each in its own session (Ctrl-C reaches them through us)."""
    env = dict(os.environ)
    if count > 1:  # share the cores and the GPU instead of each worker taking them all
        threads = str(max(1, (os.cpu_count() or 1) // count))
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    # Seeds differ between workers, between resumed rounds and (with a shared storage) machines.
    seed = config.seed + 7919 * known + (zlib.crc32(HOST.encode()) if options.storage else 0)
    spec = {
        "config": str(options.config_file),
        "overrides": list(options.overrides),
        "study": name,
        "storage": options.storage,
        "folder": str(folder),
        "target": target,
        "deadline": deadline,
        "parent": os.getpid(),
        "verbose": options.verbose,
        "offline": options.offline,
    }
    workers = []
    for i in range(
        count
    ):  # their messages go to worker-N.log: the terminal shows one line per trial
        with _open_log(folder / f"worker-{i}.log") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} starts worker {i}\n"
            )
            log.flush()
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cnnctl.tune.worker",
                        json.dumps({**spec, "index": i, "seed": (seed + 104729 * i) % 2**31}),
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
    return workers


def _open_log(path: Path) -> Any:
    """A worker's log, appended to; only ever a regular file (a FIFO here would hang us)."""
    fd = os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666
    )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CnnctlError(
            f"{path}: not a regular file", "remove it; cnnctl tune writes worker logs there"
        )
    return os.fdopen(fd, "a", encoding="utf-8")


def _worker_error(log: Path, limit: int = 8192) -> str:
    """The error a worker reported last, read from the end of its log only."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as stream:
            size = os.fstat(fd).st_size if stat.S_ISREG(os.fstat(fd).st_mode) else 0
            stream.seek(max(0, size - limit))
            lines = stream.read(min(size, limit)).decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    found = [line.split(": ", 1)[-1] for line in lines if line.startswith("tune worker ")]
    return f"{found[-1] if found else 'no message'} (see {log})"


def _watch(workers: list[subprocess.Popen], watcher: Watcher) -> tuple[list[int], bool]:
    """Wait for the workers, printing finished trials; Ctrl-C stops them (twice: at once)."""
    requests = [0]

    def stop(signum, frame) -> None:
        requests[0] += 1
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM if requests[0] == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(worker.poll() is None for worker in workers):
            watcher.poll()
            time.sleep(POLL_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [worker.returncode for worker in workers], requests[0] > 0
