"""A stand-in for the pod network, as the API server reaches it: an HTTP CONNECT proxy.

In a cluster the API server reaches pods (service and pod proxies) at their pod
IPs, directly or through a network proxy (konnectivity) named by its egress
selector configuration. Here no pod network exists and servers listen on
loopback only, and the API server refuses loopback addresses in Endpoints
("may not be in the loopback range"). So a test gives the pod an ordinary pod
IP, lets the real endpoints controller put it into the Service's Endpoints,
and starts the API server with `egress_config()`: its "cluster" traffic then
goes through this proxy, on a Unix socket, as it would through konnectivity;
each CONNECT to a pod IP:port that a test `route`d is joined to the loopback
server that plays that pod. What is not routed is refused with 502, like an
unreachable pod.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from pathlib import Path

MAX_HEAD = 8192


class PodNetwork:
    """CONNECT pod-ip:port -> a loopback address, on a Unix socket."""

    def __init__(self) -> None:
        # Short: a Unix socket path holds at most 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="podnet-"))
        self.socket_path = self.directory / "network.sock"
        self.routes: dict[str, tuple[str, int]] = {}
        self.connects: list[str] = []  # every CONNECT target asked for, in order
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def route(self, pod_ip: str, port: int, to: tuple[str, int]) -> None:
        with self._lock:
            self.routes[f"{pod_ip}:{port}"] = to

    def unroute(self, pod_ip: str, port: int) -> None:
        with self._lock:
            self.routes.pop(f"{pod_ip}:{port}", None)

    def egress_config(self) -> str:
        """An EgressSelectorConfiguration sending the API server's cluster traffic here."""
        return (
            "apiVersion: apiserver.k8s.io/v1beta1\n"
            "kind: EgressSelectorConfiguration\n"
            "egressSelections:\n"
            "  - name: cluster\n"
            "    connection:\n"
            "      proxyProtocol: HTTPConnect\n"
            "      transport:\n"
            f"        uds: {{udsName: {self.socket_path}}}\n"
        )

    def start(self) -> PodNetwork:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        self.socket_path.chmod(0o600)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True, name="podnetwork").start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        with self._lock:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.close()
            self._open.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PodNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections ----------------------------------------------------------

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.add(connection)

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and self._listener is listener:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = client.recv(1024)
            if not chunk:
                client.close()
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.partition(" ")[0]
        if method != "CONNECT":
            self._refuse(client, "405 Method Not Allowed")
            return
        with self._lock:
            self.connects.append(target)
            destination = self.routes.get(target)
        if destination is None:
            self._refuse(client, "502 Bad Gateway")
            return
        try:
            upstream = socket.create_connection(destination, timeout=10)
        except OSError:
            self._refuse(client, "502 Bad Gateway")
            return
        upstream.settimeout(None)
        self._track(upstream)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        # Anything the client sent after the CONNECT head goes on first.
        leftover = head.split(b"\r\n\r\n", 1)[1]
        if leftover:
            upstream.sendall(leftover)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update({client, upstream})
        client.close()
        upstream.close()

    @staticmethod
    def _refuse(client: socket.socket, status: str) -> None:
        with contextlib.suppress(OSError):
            client.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
            client.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until the source ends, then end the sink's writing side."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
