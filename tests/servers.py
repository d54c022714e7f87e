"""Real servers for the remote-storage tests, started on 127.0.0.1 and stopped by the tests: an HTTP
file server with range requests and fault hooks, and moto's S3-compatible server."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    """What the HTTP server does wrong, by path suffix: answer `status` to the next `count`
    requests, send only `truncate` bytes of the body, or flip the byte at an offset (`corrupt`)."""

    fail: dict[str, list[int]] = field(default_factory=dict)  # suffix -> [status, remaining count]
    truncate: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)  # suffix -> offset of the flipped byte
    stall: dict[str, float] = field(default_factory=dict)  # suffix -> seconds before the body starts
    requests: list[str] = field(default_factory=list)

    def match(self, table, path: str):
        return next((suffix for suffix in table if path.endswith(suffix)), None)


def _handler(root: Path, faults: Faults) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - the http.server API
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            faults.requests.append(path)
            suffix = faults.match(faults.fail, path)
            if suffix is not None and faults.fail[suffix][1] > 0:
                faults.fail[suffix][1] -= 1
                self.send_response(faults.fail[suffix][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = (root / path.lstrip("/")).resolve()
            if root.resolve() not in target.parents or not target.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = target.read_bytes()
            flipped = faults.match(faults.corrupt, path)
            if flipped is not None:
                at = faults.corrupt[flipped] % len(data)
                data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
            start, end, status = 0, len(data), 200
            ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
                end = min(len(data), int(ranged[2]) + 1) if ranged[2] else len(data)
                status = 206
            chunk = data[start:end]
            cut = faults.match(faults.truncate, path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            stalled = faults.match(faults.stall, path)
            if stalled is not None and body:
                time.sleep(faults.stall[stalled])  # headers sent, the body does not come
            if body:
                sent = chunk if cut is None else chunk[: faults.truncate[cut]]
                with contextlib.suppress(OSError):
                    self.wfile.write(sent)
                if cut is not None:
                    self.close_connection = True

    return Handler


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[tuple[str, Faults]]:
    """Serve `root` at http://127.0.0.1:PORT/ with range requests; yields (base URL, faults)."""
    faults = Faults()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", faults
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(monkeypatch) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; the AWS environment points the clients at it (the way a user
    points them at an S3-compatible store). Yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield endpoint
    finally:
        server.stop()


def upload_folder(endpoint: str, folder: Path, bucket: str, prefix: str) -> None:
    """Put every file of `folder` into s3://bucket/prefix/ with boto3 (the S3 client users have)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@contextlib.contextmanager
def gcs_server(monkeypatch, bucket: str) -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1 with `bucket`; STORAGE_EMULATOR_HOST points gcsfs at it."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
