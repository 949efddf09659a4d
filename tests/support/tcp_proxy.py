"""A TCP proxy in front of PostgreSQL that can black-hole it: connections hang, not refused.

`blackhole()` stops forwarding bytes on every connection, open or new (new ones are accepted
and then never answered), as a network partition or a dead NAT entry does; `restore()` drops
the hung connections silently (their peers learn nothing until they time out themselves) and
forwards again. Plain threads, so it runs beside any event loop.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    """127.0.0.1:<port> -> upstream host:port, with a black-hole switch."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.holed = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        """The same database URL, through this proxy."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def blackhole(self) -> None:
        """Every connection, open or new, stops answering."""
        self.holed.set()

    def restore(self) -> None:
        """Forget the hung connections (closed without a word to the client) and forward."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            for s in (client, server):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
        self.holed.clear()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self.restore()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.holed.is_set():
                with self._lock:
                    self._pairs.append((client, None))  # accepted, never answered
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self.closed.is_set():
                if self.holed.is_set():
                    time.sleep(0.05)  # bytes wait in the kernel's buffers, unanswered
                    continue
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
