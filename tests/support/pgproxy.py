"""A TCP proxy between the daemon and PostgreSQL that can black-hole the database.

`blackhole()` is a network partition as the client sees it: new connections are accepted and
never answered (no upstream connection is made), and the bytes of open connections are read
and dropped without a word in either direction (nothing is closed, so the client learns
nothing until a timeout of its own fires). `heal()` forwards again: connections that lost
bytes, or were never answered, are reset (their protocol streams are broken); connections
that stayed quiet through the partition carry on. Plain threads, so it runs beside any event
loop and any test harness.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket | None  # None: accepted during a black hole, never answered
    dropped: int = 0  # bytes swallowed by a black hole
    closed: threading.Event = field(default_factory=threading.Event)


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class PgProxy:
    """127.0.0.1:<port> forwarding to upstream host:port, with a black-hole switch."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._holed = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.accepted = 0
        self.hung = 0  # connections accepted during a black hole
        threading.Thread(target=self._accept, name="pgproxy-accept", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> PgProxy:
        """A proxy to the server a database URL names."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url_for(self, url: str) -> str:
        """The same database URL, through this proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    @property
    def holed(self) -> bool:
        return self._holed.is_set()

    def blackhole(self) -> None:
        """From now on nothing gets through, and nobody is told."""
        self._holed.set()

    def heal(self) -> int:
        """Forward again; reset the connections the black hole broke. Returns how many."""
        with self._lock:
            broken = [link for link in self._links if link.server is None or link.dropped]
            self._links = [link for link in self._links if link not in broken]
        for link in broken:
            link.closed.set()
            _reset(link.client)
            if link.server is not None:
                _reset(link.server)
        self._holed.clear()
        return len(broken)

    def open_connections(self) -> int:
        with self._lock:
            return sum(not link.closed.is_set() for link in self._links)

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.closed.set()
            for sock in (link.client, link.server):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._holed.is_set():
                self.hung += 1
                with self._lock:
                    self._links.append(_Link(client, None))  # accepted, never answered
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)  # the server is down: refused, as without a proxy
                continue
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pump, args=(link,), name="pgproxy-link",
                             daemon=True).start()

    def _pump(self, link: _Link) -> None:
        assert link.server is not None
        peers = {link.client: link.server, link.server: link.client}
        close = True
        try:
            while not (self._stopped.is_set() or link.closed.is_set()):
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if self._holed.is_set():
                        # Lost in the partition; a close does not get through either (the
                        # link is reset when the partition heals).
                        link.dropped += len(data) or 1
                        if not data:
                            close = False
                            return
                        continue
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            if close and not link.closed.is_set():
                link.closed.set()
                for sock in peers:
                    with contextlib.suppress(OSError):
                        sock.close()
                with self._lock:
                    if link in self._links:
                        self._links.remove(link)
