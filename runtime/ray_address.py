"""`runtime run --address A`, checked before anything is written or Ray is touched.

Ray itself retries an address where no Ray head answers for a minute or more
(RAY_gcs_server_request_timeout_seconds, 60 s by default, and again per step),
and a `ray://` address without the `ray[client]` extra ends in a traceback. Here:
- HOST:PORT must be a gRPC server: a Ray head's GCS (the address `ray start
  --head` prints) answers the HTTP/2 connection preface with a SETTINGS frame
  (RFC 9113, 3.4), where an HTTP server (the dashboard, a wrong port) answers
  text and a silent proxy answers nothing. With RAY_USE_TLS the GCS expects a
  TLS handshake first: only the TCP connection is checked.
- `auto` is resolved as Ray resolves it (RAY_ADDRESS, then the cluster that the
  last `ray start` on this machine recorded), then checked as above.
- `ray://HOST:PORT` (Ray Client) needs the `ray[client]` extra (grpcio).
- `local` starts a new local instance, as without --address.
"""

from __future__ import annotations

import importlib.util
import os
import socket

from planner.errors import UserError, first_line

PROBE_S = 5.0  # per connection step; a Ray head on a LAN answers in milliseconds
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, stream 0
_SETTINGS = 4
_FORMAT = ("expected HOST:PORT (e.g. 10.0.0.1:6379, what `ray start --head` prints), "
           "ray://HOST:PORT or auto")


class AddressError(UserError):
    pass


def check_address(address: str, timeout_s: float = PROBE_S) -> None:
    """Raise AddressError (one line naming the address) unless a Ray head answers."""
    if address == "local":
        return
    if not address or address != address.strip():
        raise AddressError(f"--address {address!r}: {_FORMAT}")
    client = address.startswith("ray://")
    target = address.removeprefix("ray://")
    if client and importlib.util.find_spec("grpc") is None:
        raise AddressError(f"--address {address}: Ray Client (ray://) needs the ray[client] "
                           "extra (pip install 'ray[client]'); or pass the head's HOST:PORT, "
                           "what `ray start --head` prints")
    if target == "auto" and not client:
        target = _resolve_auto(address)
        if target is None:
            return  # this Ray version resolves it its own way
        address = f"auto ({target})"
    host, port = _host_port(address, target)
    _probe(address, host, port, timeout_s)


def _host_port(address: str, target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if (not sep or not host or "/" in host or any(c.isspace() for c in host)
            or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536):
        raise AddressError(f"--address {address}: {_FORMAT}")
    return host, int(port)


def _resolve_auto(address: str) -> str | None:
    """The HOST:PORT `auto` stands for, as Ray finds it; None when this Ray version
    has no such helper (ray.init then resolves it)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except Exception as err:  # noqa: BLE001 - Ray's ConnectionError or ValueError
        raise AddressError(f"--address {address}: {first_line(err)}") from None


def _probe(address: str, host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            s.sendall(_PREFACE + _EMPTY_SETTINGS)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        head = None
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise AddressError(f"--address {address}: nothing answers there ({why}); start the "
                           "cluster's head with `ray start --head`, or pass its address") from None
    if head is None or len(head) < 9 or head[3] != _SETTINGS:
        what = "nothing" if not head else "something that is not a Ray head"
        raise AddressError(f"--address {address}: {what} answers the gRPC handshake there; "
                           "pass the head's GCS address, what `ray start --head` prints "
                           "(port 6379 by default)")
