"""An S3-compatible server for tests: moto's server (``moto[server]``), on loopback.

It enforces credentials (moto's IAM authorization after the first few set-up calls), so the
tests see a real refusal of a wrong secret key, not a mock's.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# The first six calls (two users, each: create, attach policy, create key) run
# unauthenticated; every later request must be signed with a user's key. Read by moto when it
# is first imported.
os.environ.setdefault("INITIAL_NO_AUTH_ACTION_COUNT", "6")


class _ConditionalWritesAtomically:
    """WSGI wrapper: one conditional write (``If-None-Match``/``If-Match``) at a time.

    S3 and MinIO check the condition and write in one atomic step. moto checks whether the key
    exists, then writes, with no lock between (``moto/s3/responses.py`` ``put_object``), so two
    concurrent ``If-None-Match: *`` PUTs of one key could both succeed there and nowhere else.
    Serializing the conditional requests gives moto S3's guarantee; nothing else is changed.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if "HTTP_IF_NONE_MATCH" not in environ and "HTTP_IF_MATCH" not in environ:
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


@dataclass(frozen=True)
class S3Server:
    """Where the test server listens and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    # A second user that may do everything but create a ``metadata.json``: a publish that
    # fails half-way, refused by the server itself.
    no_metadata_access_key: str = ""
    no_metadata_secret_key: str = ""

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """Environment variables that point the project's store at this server."""
        return {
            "MLOPS_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_REGION": "us-east-1",
        }


def _add_user(iam: Any, name: str, statements: list[dict[str, Any]]) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": statements,
    }))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running S3 server with an empty bucket ``models``."""
    import boto3
    from minio import Minio
    from moto.moto_server import threaded_moto_server
    from moto.server import ThreadedMotoServer

    class AtomicMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = threaded_moto_server.DomainDispatcherApplication(
                threaded_moto_server.create_backend_app)
            self._server = threaded_moto_server.make_server(
                self._ip_address, self._port, _ConditionalWritesAtomically(app), True,
                request_handler=threaded_moto_server.MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = AtomicMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    allow_all = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    access_key, secret_key = _add_user(iam, "mlops", [allow_all])
    no_metadata = _add_user(iam, "no-metadata", [allow_all, {
        "Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::*/metadata.json",
    }])
    found = S3Server(endpoint, access_key, secret_key, *no_metadata)
    Minio(f"{host}:{port}", found.access_key, found.secret_key, secure=False,
          region="us-east-1").make_bucket("models")
    yield found
    server.stop()
