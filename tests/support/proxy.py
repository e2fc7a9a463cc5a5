"""A TCP proxy on loopback that a test can cut and restore: a gentle way to lose a service.

Cutting it closes every connection through it and refuses new ones, as a dead or
unreachable broker would, without touching the service that other processes share.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

CHUNK = 64 * 1024


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address until cut."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections_made = 0
        self._listener: socket.socket | None = None
        # While cut, a socket bound to the port and not listening holds it: connections are
        # refused, and the port can be neither taken by another process nor picked as the
        # source port of a connection to it (on loopback that connects to itself and reads back
        # what it sent, which a client may take for answers).
        self._reserved: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- life -----------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def close(self) -> None:
        self._closed.set()
        self.cut()
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- faults ---------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
        if listener is not None:
            _shut(listener)
            if not self._closed.is_set():
                self._reserved = _bound(self.port)
        for client, server in pairs:
            _shut(client)
            _shut(server)

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._listener is None and not self._closed.is_set():
            self._listen()

    # -- plumbing -------------------------------------------------------------------------

    def _listen(self) -> None:
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved.close()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut or closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _shut(client)
                    _shut(server)
                    return
                self._pairs.add((client, server))
                self.connections_made += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, (client, server)), name="proxy-pump", daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _shut(source)
            _shut(sink)


def _bound(port: int) -> socket.socket | None:
    """A socket bound to the port, not listening (None if the port could not be held)."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the cut connections' TIME_WAIT
    try:
        held.bind(("127.0.0.1", port))
    except OSError:
        held.close()
        return None
    return held


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
