"""``python -m serving``: the local server with KServe's own arguments, as a KServe runtime starts.

KServe's runtimes (sklearnserver's ``__main__``) extend ``kserve.model_server.parser``; this does
the same, so ``--http_port`` and ``--model_name`` mean what they mean there. ``mlops serve`` is
the same server behind the project's command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kserve import model_server

from mlops.settings import DEFAULT_MODEL_NAME, state_dir
from serving.auth import read_token
from serving.limits import ConnectionLimits
from serving.server import DEFAULT_MAX_BODY_BYTES, ServerSettings, run_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """KServe's model server arguments plus where the local state is."""
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--state_dir", type=Path, default=None, help="MLOPS_HOME (.mlops)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--poll_interval", type=float, default=0.5, help="state file checks (s)")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--auth_token_file", type=Path, default=None, help="bearer token (or MLOPS_SERVING_TOKEN)"
    )
    parser.add_argument(
        "--allow_unauthenticated", action="store_true", help="no token beyond loopback"
    )
    defaults = ConnectionLimits()
    parser.add_argument("--max_header_bytes", type=int, default=defaults.max_header_bytes)
    parser.add_argument("--header_timeout", type=float, default=defaults.header_timeout_s)
    parser.add_argument("--body_timeout", type=float, default=defaults.body_timeout_s)
    parser.add_argument("--max_connections", type=int, default=defaults.max_connections)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the InferenceService's revisions and serve them until interrupted."""
    args = parse_args(argv)
    # KServe's default model name is "model"; here it is the InferenceService's name.
    name = DEFAULT_MODEL_NAME if args.model_name == "model" else args.model_name
    run_server(
        ServerSettings(
            name=name,
            state_dir=(args.state_dir or state_dir()).resolve(),
            host=args.host,
            port=args.http_port,
            poll_interval_s=args.poll_interval,
            max_body_bytes=args.max_body_bytes,
            auth_token=read_token(args.auth_token_file),
            allow_unauthenticated=args.allow_unauthenticated,
            limits=ConnectionLimits(
                args.max_header_bytes, args.header_timeout, args.body_timeout, args.max_connections
            ),
        )
    )


if __name__ == "__main__":
    main()
