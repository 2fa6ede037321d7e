"""Steady load of real rows for a rollout: several concurrent clients, every answer counted.

    .venv/bin/python benchmarks/rollout_load.py --url http://127.0.0.1:8080 --clients 8 \
        --duration 60 --rate 40

Each client sends v2 requests of one row of the breast-cancer data (a random row each time)
over a keep-alive connection, at ``--rate`` requests a second per client at most, until
``--duration`` seconds pass (or SIGTERM/SIGINT). At the end it prints one JSON line: requests
sent, answered per status, failed (any non-200 or connection error), and per model version.
Run it in the background next to ``mlops rollout``; a rollback or promote must fail none.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np


def rows() -> np.ndarray:
    """The breast-cancer feature rows (what the model was trained on)."""
    from sklearn.datasets import load_breast_cancer

    return np.asarray(load_breast_cancer().data, dtype=float)


def body(row: np.ndarray) -> dict[str, Any]:
    """A v2 request of one row."""
    return {
        "inputs": [
            {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": list(row)}
        ]
    }


def client(
    url: str, name: str, data: np.ndarray, rate: float, stop: threading.Event, tally: Counter[str]
) -> None:
    """Send requests until ``stop``; count statuses and answering versions into ``tally``."""
    pause = 1.0 / rate if rate > 0 else 0.0
    pick = random.Random()
    with httpx.Client(base_url=url, timeout=30.0) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = http.post(
                    f"/v2/models/{name}/infer", json=body(data[pick.randrange(len(data))])
                )
                tally[f"status_{answer.status_code}"] += 1
                tally[f"version_{answer.headers.get('x-mlops-model-version', '?')}"] += 1
                if answer.status_code != 200:
                    tally["failed"] += 1
            except httpx.HTTPError as err:
                tally[f"error_{type(err).__name__}"] += 1
                tally["failed"] += 1
            tally["sent"] += 1
            rest = pause - (time.monotonic() - started)
            if rest > 0:
                stop.wait(rest)


def main() -> None:
    """Parse the arguments, run the clients, print the tally."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--name", default="breast-cancer")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s per client at most")
    args = parser.parse_args()
    data = rows()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tallies: list[Counter[str]] = [Counter() for _ in range(args.clients)]
    threads = [
        threading.Thread(target=client, args=(args.url, args.name, data, args.rate, stop, t))
        for t in tallies
    ]
    for thread in threads:
        thread.start()
    try:
        stop.wait(args.duration)
    except KeyboardInterrupt:
        pass
    stop.set()
    for thread in threads:
        thread.join()
    total: Counter[str] = sum(tallies, Counter())
    total.setdefault("failed", 0)
    print(json.dumps(dict(sorted(total.items()))), flush=True)


if __name__ == "__main__":
    main()
