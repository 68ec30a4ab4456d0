"""A recording, fault-injecting HTTP proxy on 127.0.0.1 in front of moto's server.

Tests point ``AWS_ENDPOINT_URL`` here, so every S3 request that s3fs or boto3 makes, from the
test process or from Dask worker processes, is forwarded to moto and logged as
``(method, path)``. That lets a test count real requests (how often an input is read)
without patching any of our functions.

A test can also arm faults: "the next N requests matching (method, path regex) get ...":

- ``"500"``: HTTP 500 InternalError, ``"503"``: HTTP 503 SlowDown (S3's throttling answer),
  ``"429"``: HTTP 429 TooManyRequests (how other stores and gateways throttle),
  ``"403"``: HTTP 403 AccessDenied (permanent), ``"409"``: HTTP 409 ConditionalRequestConflict (S3's
  answer to a conditional write racing another on the same key), each with S3's XML error body;
- ``"reset"``: the request is read, then the socket is closed with a TCP reset and no answer;
- ``"delay"``: the request reaches moto, and its answer is held back ``seconds`` before it is
  sent (a slow response: a write has happened when its answer is late or lost);
- ``"hold"``: the request is held ``seconds``, then dropped with a reset, never reaching moto (a
  write in flight when its writer dies); the proxy prints ``held METHOD PATH`` on stdout.

Conditional writes (a PUT or DELETE with ``If-Match`` or ``If-None-Match``) pass one at a time:
S3 checks the condition and writes in one step, while moto's server (5.2.6) checks, then writes,
in each request's own thread, so two conditional writes of one version could both pass there.
Serialised here, moto answers them as S3 does.

The proxy lives in the test process; worker processes reach it over loopback, so plain
in-memory rules under a lock are seen by every request. It binds 127.0.0.1 only, forwards to
127.0.0.1 only, and answers nobody else.

:class:`ServerProcess` runs moto and the proxy in a child process instead (this file as a
script): delta-rs holds the GIL while it waits on S3, so a server in the test process's threads
would never answer it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from xml.sax.saxutils import escape

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}

Fault = Literal["500", "503", "429", "403", "409", "reset", "delay", "hold"]
ERRORS: dict[str, tuple[int, str, str, str]] = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "429": (429, "Too Many Requests", "TooManyRequests", "Too many requests."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "409": (
        409,
        "Conflict",
        "ConditionalRequestConflict",
        "A conflicting conditional operation is currently in progress against this resource. Please try again.",
    ),
}


@dataclass
class Rule:
    """Arm ``fault`` for the next ``times`` requests whose method and path match, after skipping ``after``."""

    fault: Fault
    method: str  # "GET", "PUT", ... or "*"
    path: re.Pattern[str]  # searched in the request path, query string included
    times: int
    after: int = 0
    seconds: float = 0.0  # for "delay"
    injected: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.path.search(path) is not None


class S3Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[tuple[str, str]] = []
        self.injected: list[tuple[str, str, str]] = []  # (fault, method, path) of every fault served
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        self._conditional = threading.Lock()  # held across a conditional write's round trip to moto
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                if self.client_address[0] != "127.0.0.1":  # bounded: loopback clients only
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                rule = proxy._take(self.command, self.path)
                if rule is not None and rule.fault == "hold":
                    print(f"held {self.command} {self.path}", flush=True)
                    time.sleep(rule.seconds)
                if rule is not None and rule.fault in ("reset", "hold"):
                    self._reset()
                    return
                if rule is not None and rule.fault in ERRORS:
                    self._error(rule.fault)
                    return
                conditional = self.command in ("PUT", "DELETE") and bool(
                    {"if-match", "if-none-match"} & {k.lower() for k in self.headers}
                )
                with proxy._conditional if conditional else contextlib.nullcontext():
                    upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    upstream.close()
                if rule is not None:  # "delay": moto has acted; its answer comes late
                    time.sleep(rule.seconds)
                try:
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_HEADERS | {"content-length"}:
                            self.send_header(key, value)
                    # A HEAD answer has no body but carries the object's length.
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:  # the client gave up waiting (its read timeout) and hung up
                    self.close_connection = True

            def _error(self, fault: str) -> None:
                status, reason, code, message = ERRORS[fault]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    f"<Resource>{escape(self.path.split('?', 1)[0])}</Resource>"
                    f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
                ).encode()
                self.send_response(status, reason)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
                self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _reset(self) -> None:
                """Close with RST (linger 0) and no answer: what a dropped connection looks like."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.wfile = _Discard()  # the server's own flush after this request must not write
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> S3Proxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(
        self, fault: Fault, method: str, path: str, times: int = 1, after: int = 0, seconds: float = 0.0
    ) -> Rule:
        """Arm a fault for the next ``times`` matching requests (``path`` is a regex); returns the rule."""
        if fault not in (*ERRORS, "reset", "delay", "hold"):
            raise ValueError(f"unknown fault {fault!r}")
        rule = Rule(fault, method.upper(), re.compile(path), times, after, seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take(self, method: str, path: str) -> Rule | None:
        """Record the request; the first armed rule it matches fires (and is used up after ``times``)."""
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.injected < rule.times and rule.matches(method, path):
                    if rule.after > 0:
                        rule.after -= 1
                        continue
                    rule.injected += 1
                    self.injected.append((rule.fault, method, path))
                    return rule
        return None

    def faults(self, fault: str | None = None, method: str | None = None) -> int:
        """How many faults were served, optionally of one kind and method."""
        with self._lock:
            return sum(1 for f, m, _ in self.injected if fault in (None, f) and method in (None, m))

    def count(self, method: str, path_part: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and path_part in p)

    def clear(self) -> None:
        """Forget recorded requests and served faults, and disarm every rule."""
        with self._lock:
            self.requests.clear()
            self.injected.clear()
            self.rules.clear()


class _Discard:
    closed = False

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ServerProcess:
    """moto's server behind the proxy in a child process; :meth:`inject` arms its rules, stop() ends it."""

    def __init__(self) -> None:
        command = [sys.executable, __file__]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        port = self.process.stdout.readline().strip()  # type: ignore[union-attr]
        if not port.isdigit():
            self.stop()
            raise RuntimeError(f"the S3 server process did not start: {port!r}")
        self.endpoint = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.put(line.strip())

    def inject(self, **rule: Any) -> None:
        """:meth:`S3Proxy.inject` in the child: armed when this returns."""
        self.process.stdin.write(json.dumps(rule) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        self.wait_for("armed", timeout=30)

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The next line the server prints that starts with ``prefix`` (``held PUT /bucket/...``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise TimeoutError(f"the S3 server printed no {prefix!r} line in {timeout} s")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _serve() -> None:
    """The child: prints the proxy's port, then arms one rule per JSON line on stdin until it closes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = S3Proxy(server.get_host_and_port()[1]).start()
    print(proxy.port, flush=True)
    for line in sys.stdin:
        proxy.inject(**json.loads(line))
        print("armed", flush=True)


if __name__ == "__main__":
    _serve()
