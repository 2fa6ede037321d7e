"""How many logged requests (request + response CloudEvent pairs) one payload sink takes per second.

Starts ``serving.payload_sink`` under uvicorn on a free loopback port (one process, as in the
cluster), posts the KServe v0.20.0 agent's events (the fixtures) from several client threads,
then reads ``/metrics`` back and checks every pair was counted. Prints the figures; asserts no
speed.

    PYTHONPATH=. .venv/bin/python benchmarks/payload_sink_throughput.py [PAIRS] [CLIENTS]
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
import uvicorn

from serving.canary_analysis import parse_exposition
from serving.payload_sink import PayloadCounter, create_app

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "kserve_payload_logger"


def main(pairs: int = 4000, clients: int = 8) -> None:
    """Post ``pairs`` request/response pairs from ``clients`` threads; print pairs per second."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counter = PayloadCounter(references=lambda _uri: None)
    server = uvicorn.Server(
        uvicorn.Config(create_app(counter), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/"
    request, response = (
        json.loads((FIXTURES / f"canary_{kind}.json").read_text())
        for kind in ("request", "response")
    )
    http = urllib3.PoolManager(maxsize=clients)

    def post_pair(i: int) -> None:
        for event in (request, response):
            headers = event["headers"] | {"Ce-Id": f"bench-{i}"}
            assert http.request("POST", url, body=event["body"], headers=headers).status == 202

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post_pair, range(pairs)))
    elapsed = time.perf_counter() - started
    counted = parse_exposition(http.request("GET", url + "metrics").data.decode(), "iris")
    server.should_exit = True
    print(f"pairs posted         {pairs} from {clients} clients in {elapsed:.2f} s")
    print(f"pairs per second     {pairs / elapsed:.0f}")
    print(f"pairs counted        {counted.get('v2').requests:.0f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
