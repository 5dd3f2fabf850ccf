"""A real S3-compatible server for tests and benchmarks: moto's server mode in its own process on
127.0.0.1 (``pip install 'sact[test]'``).

Clients talk to it over HTTP through s3fs and botocore exactly as they would talk to AWS or MinIO;
only the endpoint (``AWS_ENDPOINT_URL``) and dummy credentials come from the environment
(``s3_environment``). The pytest fixtures on top of it are in tests/conftest.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "sact-test",
        "AWS_SECRET_ACCESS_KEY": "sact-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def local_s3_server() -> Iterator[str]:
    """Run ``python -m moto.server`` on a free port of 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def make_bucket() -> str:
    """A fresh, empty bucket on the server the environment points at: ``s3://<name>``."""
    import s3fs

    name = f"sact-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
