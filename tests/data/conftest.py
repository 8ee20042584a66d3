"""Fixtures for the storage tests: a tiny HTTP endpoint that answers slowly or with errors."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest


@dataclasses.dataclass
class FakeEndpoint:
    """An HTTP server on 127.0.0.1 that answers every request with `status` after `delay`
    seconds and counts the requests it got (an S3 endpoint that is there but unhelpful)."""

    url: str
    requests: list[str]


@pytest.fixture
def fake_endpoint() -> Iterator[Any]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int = 404, delay: float = 0.0) -> FakeEndpoint:
        seen: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append(f"{self.command} {self.path}")
                time.sleep(delay)
                body = (
                    b""
                    if self.command == "HEAD"
                    else (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                        b"<Message>fake</Message></Error>"
                    )
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return FakeEndpoint(f"http://127.0.0.1:{server.server_address[1]}", seen)

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
