"""A TCP proxy in front of the real broker that can break one client's produce requests.

The broker advertises the proxy's address, so every client's connections go through it. The proxy
reads the Kafka request framing (size, api_key, api_version, correlation_id, client_id) on the way
in; while a fault is armed, a Produce request (api_key 0) from a client whose client_id starts with
the given prefix makes the proxy drop that connection before the request reaches the broker: the
record is never written and the client sees a broken connection, as with a broker outage.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

PRODUCE = 0


class KafkaFaultProxy:
    def __init__(self, listen_port: int, broker_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.broker_port = broker_port
        self.fault_client_prefix: str | None = None
        self.dropped_produces = 0
        self._server = socket.create_server((host, listen_port), reuse_port=False)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> KafkaFaultProxy:
        thread = threading.Thread(target=self._accept, daemon=True, name="kafka-proxy")
        thread.start()
        self._threads.append(thread)
        return self

    def break_produces_of(self, client_prefix: str | None) -> None:
        """Drop produce requests of clients whose client_id starts with ``client_prefix`` (None: heal)."""
        self.fault_client_prefix = client_prefix

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            broker = socket.create_connection((self.host, self.broker_port))
            with self._lock:
                self._sockets += [client, broker]
            for target, args in ((self._upstream, (client, broker)), (self._downstream, (broker, client))):
                t = threading.Thread(target=target, args=args, daemon=True)
                t.start()

    def _upstream(self, client: socket.socket, broker: socket.socket) -> None:
        """Client -> broker, one request frame at a time, so a faulted produce never reaches the broker."""
        try:
            while True:
                size_raw = _read_exactly(client, 4)
                (size,) = struct.unpack(">i", size_raw)
                frame = _read_exactly(client, size)
                api_key, _version, _corr = struct.unpack(">hhi", frame[:8])
                (id_len,) = struct.unpack(">h", frame[8:10])
                client_id = frame[10 : 10 + id_len].decode(errors="replace") if id_len > 0 else ""
                prefix = self.fault_client_prefix
                if api_key == PRODUCE and prefix is not None and client_id.startswith(prefix):
                    self.dropped_produces += 1
                    raise ConnectionResetError("fault injected: produce dropped")
                broker.sendall(size_raw + frame)
        except (OSError, struct.error):
            pass
        finally:
            for s in (client, broker):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _downstream(self, broker: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := broker.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (client, broker):
                with contextlib.suppress(OSError):
                    s.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("peer closed")
        buf += chunk
    return bytes(buf)
