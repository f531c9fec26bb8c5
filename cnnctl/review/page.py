"""`cnnctl report`: one run as a single HTML file that needs nothing else.

Images are embedded as data: URIs, the style is inline, there is no script; a Content
Security Policy forbids every fetch, so the page opens the same from an e-mail attachment,
a CI artifact or a folder with no network. Everything shown is read from the run folder
(config, metrics, evaluation, figures, export checks) through cnnctl's limits, and every
text from it is escaped: a class name cannot become markup.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cnnctl.config.paths import flatten
from cnnctl.errors import CnnctlError, RunError
from cnnctl.limits import inside, read_bounded
from cnnctl.review.compare import Compared, read_run
from cnnctl.runs import Run, write_text

PNG = b"\x89PNG\r\n\x1a\n"
MAX_ROWS = 200  # rows of one table; the rest is counted
MAX_EXPLAINED = 24  # Grad-CAM overlays shown from explain/
CURVES = "curves.png"

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#555}
.muted{color:#777}
"""
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def write_report(run: Run, output: Path | None) -> Path:
    """Write `run`'s page to `output` (default: report.html in the run folder)."""
    path = output or run.path / "report.html"
    page = report_page(run)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, page)
    except OSError as error:
        raise RunError(
            f"{path}: cannot write the report ({error.strerror or error})",
            "choose a writable place with --output",
        ) from None
    return path


def report_page(run: Run) -> str:
    """The whole page as text."""
    run.check_inside()
    item = read_run(run)
    parts = [_header(item), _config(run), _curves(run, item), _evaluation(run)]
    parts += [_explained(run), _exports(run)]
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cnnctl run {_e(item.name)}</title><style>{STYLE}</style></head><body>"
        + "".join(parts)
        + f"<p class='muted'>written by cnnctl report from {_e(run.path)} on {made}</p>"
        "</body></html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _header(item: Compared) -> str:
    facts = {
        "task": item.task,
        "data": item.data,
        "status": item.status,
        "epochs": f"{item.epochs_done} of {item.epochs}",
        f"test {item.headline}": item.test,
        "best validation": None
        if item.best_value is None
        else f"{item.monitor} {item.best_value:.4f} at epoch {item.best_epoch}",
        "seconds": item.seconds,
    }
    return f"<h1>{_e(item.name)}</h1>" + _pairs(facts)


def _config(run: Run) -> str:
    try:
        text = read_bounded(run.effective_config, RunError).decode("utf-8", "replace")
    except CnnctlError as error:
        return f"<h2>Config</h2><p>{_e(error.message)}</p>"
    return (
        f"<h2>Config</h2><p class='muted'>{_e(run.effective_config.name)}</p><pre>{_e(text)}</pre>"
    )


def _curves(run: Run, item: Compared) -> str:
    body = _figure(run, run.path / CURVES, "loss and metrics per epoch")
    if not body and item.rows:  # a run still training: drawn from metrics.csv
        from cnnctl.report.figures import curves_figure

        figure = curves_figure(item.rows)
        out = io.BytesIO()
        figure.savefig(out, dpi=100, format="png")
        body = _img(out.getvalue(), "loss and metrics per epoch")
    rows = [{k: _number(v) for k, v in row.items()} for row in item.rows]
    return "<h2>Training</h2>" + body + _rows(rows)


def _evaluation(run: Run) -> str:
    data = _json(run, run.evaluation)
    if not data:
        return (
            "<h2>Evaluation</h2><p class='muted'>not evaluated yet: "
            f"cnnctl evaluate {_e(run.path)}</p>"
        )
    scalars, tables = {}, []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append(f"<h3>{_e(key.replace('_', ' '))}</h3>" + _rows(value))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            rows = [{"name": name, **flatten(fields)} for name, fields in value.items()]
            tables.append(f"<h3>{_e(key.replace('_', ' '))}</h3>" + _rows(rows))
        elif isinstance(value, list) and value and isinstance(value[0], list):
            continue  # a matrix: its figure shows it
        else:
            scalars.update(flatten(value, key) if isinstance(value, dict) else {key: value})
    figures = "".join(
        _figure(run, path, path.stem.replace("_", " "))
        for path in sorted(run.path.glob("*.png"))
        if path.name != CURVES
    )
    worst = _csv_rows(run, run.path / "misclassified.csv", 20)
    shown = f"<h3>worst examples (first {len(worst)})</h3>" + _rows(worst) if worst else ""
    return "<h2>Evaluation</h2>" + _pairs(scalars) + "".join(tables) + figures + shown


def _explained(run: Run) -> str:
    folder = run.path / "explain"
    if not folder.is_dir() or not inside(run.path, folder):
        return ""
    found = sorted(folder.rglob("*.png"))[:MAX_EXPLAINED]
    shown = "".join(_figure(run, path, str(path.relative_to(folder))) for path in found)
    return "<h2>Explanations</h2>" + (shown or "<p class='muted'>no images in explain/</p>")


def _exports(run: Run) -> str:
    data = _json(run, run.path / "export" / "export.json")
    records = data.get("exports") if isinstance(data.get("exports"), list) else []
    rows = [flatten(r) for r in records if isinstance(r, dict)]
    if not rows:
        return f"<h2>Export checks</h2><p class='muted'>none: cnnctl export {_e(run.path)} ...</p>"
    return "<h2>Export checks</h2>" + _rows(rows)


# --------------------------------------------------------------------------- pieces


def _figure(run: Run, path: Path, caption: str) -> str:
    """An embedded PNG of the run folder; nothing where it is missing, outside or not a PNG."""
    if not path.is_file() or not inside(run.path, path):
        return ""
    with contextlib.suppress(CnnctlError):
        data = read_bounded(path, RunError, "image_bytes")
        if data.startswith(PNG):
            return _img(data, caption)
    return ""


def _img(data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{encoded}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _pairs(facts: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{_e(key)}</th><td>{_e(_number(value))}</td></tr>"
        for key, value in facts.items()
        if value is not None
    )
    return f"<table>{cells}</table>"


def _rows(rows: Sequence[dict[str, Any]]) -> str:
    """A table of dicts, columns in order of first appearance; long tables cut with a count."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows[:MAX_ROWS] for k in row))[:30]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows[:MAX_ROWS]
    )
    more = f"<p class='muted'>{len(rows) - MAX_ROWS} more rows</p>" if len(rows) > MAX_ROWS else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _cell(value: Any) -> str:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    shown = "" if value is None else _number(value)
    return f"<td class='n'>{_e(shown)}</td>" if number else f"<td>{_e(shown)}</td>"


def _number(value: Any) -> Any:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.3g}"
    return int(value) if isinstance(value, float) else value


def _json(run: Run, path: Path) -> dict[str, Any]:
    with contextlib.suppress(CnnctlError):
        data = run.read_json(path)
        return data if isinstance(data, dict) else {}
    return {}


def _csv_rows(run: Run, path: Path, count: int) -> list[dict[str, str]]:
    if not path.is_file() or not inside(run.path, path):
        return []
    with contextlib.suppress(CnnctlError, csv.Error, UnicodeDecodeError):
        text = read_bounded(path, RunError).decode()
        return list(_first(csv.DictReader(io.StringIO(text)), count))
    return []


def _first(rows: Iterable[dict[str, str]], count: int) -> list[dict[str, str]]:
    found = []
    for row in rows:
        if len(found) >= count:
            break
        found.append(row)
    return found
