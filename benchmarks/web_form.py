"""Benchmark: the web form in headless Chromium, and what the cluster frontend adds to a request.

Serves the project's default model with `mlops serve` (version 1, as serving_throughput.py
does) and puts `python -m serving.form` in front of it, then prints:

- the page's size and the browser's time from navigation to a drawn form, and from a click on
  "Predict" to the shown answer (medians), next to one direct v2 request with httpx;
- the median latency of a 1-row ``predict_proba`` request direct and through the frontend,
  from one keep-alive httpx client, and the frontend's peak RSS.

    .venv/bin/python benchmarks/web_form.py [--requests 200] [--clicks 20]

The frontend binds 0.0.0.0 as in the pod (so it imports what the pod imports), with a random
bearer token, so nothing but this script can use it while it runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_throughput import NAME, body, free_port, prepare, start_local, stop, wait_ready  # noqa: E402

CHROMIUM = os.environ.get("MLOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def start_frontend(upstream: str, store: Path, token: str, log: Path) -> tuple[Any, str]:
    port = free_port()
    env = {**os.environ, "MLOPS_SERVING_TOKEN": token}
    command = [sys.executable, "-m", "serving.form", "--upstream", upstream, "--port", str(port)]
    command += ["--store-uri", str(store), "--host", "0.0.0.0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/", process)
    return process, url


def latencies_ms(url: str, payload: bytes, count: int, token: str | None = None) -> list[float]:
    import httpx

    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    times = []
    with httpx.Client(headers=headers) as client:
        for _ in range(count):
            start = time.perf_counter()
            answer = client.post(f"{url}/v2/models/{NAME}/infer", content=payload)
            times.append(1000 * (time.perf_counter() - start))
            answer.raise_for_status()
    return times


_CLICK_TO_ANSWER = """() => new Promise((resolve) => {
  const result = document.getElementById("result");
  result.hidden = true;
  const start = performance.now();
  const watch = new MutationObserver(() => {
    if (!result.hidden) { watch.disconnect(); resolve(performance.now() - start); }
  });
  watch.observe(result, { attributes: true });
  document.getElementById("predict").click();
})"""


def browser_ms(url: str, clicks: int, token: str) -> tuple[int, float, float]:
    """Page bytes, navigation-to-form time and median click-to-answer time (ms)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        start = time.perf_counter()
        answer = page.goto(url + "/")
        page.wait_for_selector("#error:not([hidden])")  # 401: the token is asked for
        page.fill("#token", token)
        page.click("#save-token")
        page.wait_for_selector("#feature-29")
        ready_ms = 1000 * (time.perf_counter() - start)
        size = len(answer.body()) if answer else 0
        page.click("#fill-example")
        # Timed inside the page (performance.now): playwright's click and wait add tens of ms.
        times = [page.evaluate(_CLICK_TO_ANSWER) for _ in range(clicks)]
        browser.close()
    return size, ready_ms, statistics.median(times)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="mlops-form-bench-") as tmp:
        work = Path(tmp)
        home = work / ".mlops"
        # The version is signed with this state directory's key, which the server verifies.
        os.environ["MLOPS_HOME"] = str(home)
        _, _, rows = prepare(home, work)
        server, url = start_local(home, work / "serve.log")
        try:
            frontend, front_url = start_frontend(url, home / "store", token, work / "front.log")
            try:
                payload = body(rows[:1])[:-1] + b', "parameters": {"predict_proba": true}}'
                latencies_ms(url, payload, 20)  # warm both paths
                latencies_ms(front_url, payload, 20, token)
                direct = statistics.median(latencies_ms(url, payload, args.requests))
                proxied = statistics.median(latencies_ms(front_url, payload, args.requests, token))
                size, ready, click = browser_ms(front_url, args.clicks, token)
                rss = peak_rss_mb(frontend.pid)
            finally:
                stop(frontend)
        finally:
            stop(server)
    print(f"page: {size} bytes (HTML with its CSS and JavaScript inlined)")
    print(f"browser: form drawn {ready:.0f} ms after navigation (with the token step)")
    print(f"browser: click on Predict to shown answer, median of {args.clicks}: {click:.1f} ms")
    print(f"1-row predict_proba, median of {args.requests}: direct {direct:.2f} ms, ", end="")
    print(f"through the frontend {proxied:.2f} ms (+{proxied - direct:.2f} ms)")
    print(f"frontend peak RSS: {rss:.0f} MB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per path")
    parser.add_argument("--clicks", type=int, default=20, help="predictions in the browser")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
