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
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # Nagle holds each response's body until the client's delayed ACK (40 ms a request).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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

    if not is_loopback(host) and not options.api_key:
        note(
            f"warning: --host {host} is reachable from other machines and no --api-key is set: "
            "anyone who can reach it can use the model"
        )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
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
        http=header_deadline_protocol(),
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


def header_deadline_protocol() -> type:
    """uvicorn's h11 protocol, with a deadline for a request's line and headers.

    uvicorn times out idle keep-alive connections but not a client that sends its headers a
    byte at a time (slowloris); such a connection is closed after `request_seconds`. The body
    has its own deadline (`uploads.read_body`).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from cnnctl.limits import limit

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._waiting():
                if self._deadline is None:
                    self._start()
            elif self._deadline is not None:  # the headers are in
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _start(self) -> None:
            self._deadline = self.loop.call_later(limit("request_seconds"), self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
