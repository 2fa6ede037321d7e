"""An S3-compatible server for tests: moto's server (``moto[server]``), on loopback.

It enforces credentials (moto's IAM authorization after the first few set-up calls), so the
tests see a real refusal of a wrong secret key, not a mock's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# The first three calls (create user, attach policy, create key) run unauthenticated; every
# later request must be signed with the user's key. Read by moto when it is first imported.
os.environ.setdefault("INITIAL_NO_AUTH_ACTION_COUNT", "3")


@dataclass(frozen=True)
class S3Server:
    """Where the test server listens and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """Environment variables that point the project's store at this server."""
        return {
            "MLOPS_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running S3 server with an empty bucket ``models``."""
    import boto3
    from minio import Minio
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="mlops")
    iam.put_user_policy(UserName="mlops", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName="mlops")["AccessKey"]
    found = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    Minio(f"{host}:{port}", found.access_key, found.secret_key, secure=False,
          region="us-east-1").make_bucket("models")
    yield found
    server.stop()
