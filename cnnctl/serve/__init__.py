"""The serve wing: a trained model behind HTTP (`cnnctl serve`).

`model` picks and loads what is served (an exported file without TensorFlow, or the Keras
model), `uploads` reads request bodies within the limits every file meets, `batcher` scores
concurrent requests together, `metrics` counts them for Prometheus, `app` holds the routes and
the page, `server` runs it all under uvicorn and drains it on SIGTERM.
"""

from __future__ import annotations

from cnnctl.errors import CnnctlError

PIP_EXTRA = 'pip install "cnnctl[serve]"'


def require_serve_extra() -> None:
    """FastAPI, uvicorn, prometheus-client and python-multipart, or the pip line for them."""
    import importlib.util

    for module in ("fastapi", "uvicorn", "prometheus_client", "python_multipart"):
        try:
            missing = importlib.util.find_spec(module) is None
        except ValueError:  # in sys.modules as None: blocked, as good as missing
            missing = True
        if missing:
            raise CnnctlError(
                f"{module} is not installed; cnnctl serve needs the 'serve' extra", PIP_EXTRA
            )
