"""Run the app under uvicorn on a socket of our own; SIGTERM and Ctrl-C drain, then exit 0."""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Callable

from cnnctl.errors import CnnctlError
from cnnctl.serve.app import ServeOptions, create_app
from cnnctl.serve.model import ServedModel

DRAIN_SECONDS = 30  # requests in flight get this long to finish after SIGTERM
PIP_EXTRA = 'pip install "cnnctl[serve]"'


def require_serve_extra() -> None:
    """FastAPI, uvicorn, prometheus-client and python-multipart, or the pip line for them."""
    import importlib.util

    for module in ("fastapi", "uvicorn", "prometheus_client", "python_multipart"):
        if importlib.util.find_spec(module) is None:
            raise CnnctlError(
                f"{module} is not installed; cnnctl serve needs the 'serve' extra", PIP_EXTRA
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use or an address not here is the user's to fix (exit 2)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise CnnctlError(
            f"--host {host} --port {port}: cannot listen there ({error.strerror})",
            "choose another --port (0 picks a free one), or stop what holds it",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(
    served: ServedModel, host: str, port: int, options: ServeOptions, note: Callable[[str], None]
) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight are answered before it returns."""
    import uvicorn

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    if not is_loopback(host) and not options.api_key:
        note(
            f"warning: listening on {host}, reachable from other machines, without --api-key: "
            "anyone who can reach it can use the model"
        )
    shown = f"[{host}]" if ":" in host else host
    note(f"serving {served.banner()}")
    note(f"on http://{shown}:{bound}/ (the page; API docs at /docs); Ctrl-C or SIGTERM stops it")
    config = uvicorn.Config(
        create_app(served, options),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=DRAIN_SECONDS,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn drains on these signals, then raises them again once done: answered by a handler
    # that does nothing, the command ends normally (exit 0) instead of as an interrupt (130).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    note("stopped: every request in flight was answered")
