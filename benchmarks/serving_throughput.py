"""Benchmark: `mlops serve` (KServe ModelServer + canary router) vs MLServer's sklearn runtime.

Both serve the same ``model.joblib`` on loopback under the same load, taking turns: v2 JSON
requests of 1 row and of 1000 rows, from a fixed number of keep-alive connections for a fixed
duration, repeated; the table has the medians. Two load generators drive them in turn: `wrk`
(``benchmarks/wrk_load.py``; one thread, installed with apt-get when missing) and this
script's own (``--loadgen``: a separate process speaking minimal HTTP/1.1 over asyncio
streams). `mlops serve` runs ``--workers N`` processes and MLServer ``parallel_workers: N``
inference processes (N: ``--workers``, the number of CPUs by default). MLServer is what KServe
picks for sklearn with protocol v2 when no runtime is named.

    .venv/bin/python benchmarks/serving_throughput.py [--duration 5] [--repeat 3] [--concurrency 8]

MLServer and mlserver-sklearn are installed into their own venv (``<MLOPS_HOME>/bench-venv``,
created on first use) so their pins never touch the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.wrk_load import ensure_wrk, run_wrk  # noqa: E402

NAME = "breast-cancer"
# uvloop 0.22+ refuses asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
# inference workers call at start: they die and the server exits.
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")


# ---------------------------------------------------------------- load generator (own process)


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                close = close or line.lower() == b"connection: close"
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            if close:  # the server spreads connections over its workers: connect again
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()
    return errors


async def _load(url: str, body: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + duration_s
    errors = await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def loadgen_main(args: argparse.Namespace) -> None:
    body = Path(args.body).read_bytes()
    print(json.dumps(asyncio.run(_load(args.url, body, args.concurrency, args.duration))))


def run_load(url: str, body_file: Path, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Run the load generator in its own process and return its figures."""
    command = [sys.executable, __file__, "--loadgen", "--url", url, "--body", str(body_file)]
    command += ["--concurrency", str(concurrency), "--duration", str(duration_s)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout))


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def mlserver_venv(home: Path) -> Path:
    """The venv holding MLServer (created on first use); returns its ``mlserver`` script."""
    venv = home / "bench-venv"
    script = venv / "bin" / "mlserver"
    if not script.exists():
        import sklearn

        print(f"installing {', '.join(MLSERVER_PINS)} into {venv} (once)...", file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        pins = [*MLSERVER_PINS, f"scikit-learn=={sklearn.__version__}"]
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pins], check=True)
    return script


def start_local(home: Path, log: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MLOPS_HOME": str(home)}
    mlops = str(Path(sys.executable).with_name("mlops"))
    command = [mlops, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--workers", str(workers)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/models/{NAME}/ready", process)
    return process, url


def start_mlserver(
    script: Path, model_file: Path, work: Path, log: Path, workers: int
) -> tuple[Any, str]:
    folder = work / "mlserver"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(model_file, folder / "model.joblib")
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        # Inference processes behind MLServer's one HTTP process (its default is 1).
        "parallel_workers": workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(script), "start", str(folder)], stdout=out, stderr=subprocess.STDOUT, cwd=folder
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/models/{NAME}/ready", process)
    return process, url


# ---------------------------------------------------------------- the benchmark


def prepare(home: Path, work: Path) -> tuple[Path, Any, Any]:
    """Train the project's default model, publish it as version 1 and deploy it locally."""
    import joblib
    import sklearn

    from mlops.data import load_table
    from mlops.publishing import build_metadata, publish_model
    from mlops.training import fit_classifier
    from mlops.validation import reference_statistics
    from serving.deploy import deploy_inference_service
    from serving.inference_service import PredictorSettings

    frame = load_table("sklearn:breast_cancer")
    model = fit_classifier(frame, "target", "logistic_regression", {"max_iter": 1000}, 0)
    path = work / "model.joblib"
    joblib.dump(model, path)
    features = [c for c in frame.columns if c != "target"]
    metadata = build_metadata(
        path, {}, "", {}, reference_statistics(frame, "target"), features, sklearn.__version__
    )
    version, uri = publish_model(str(home / "store"), NAME, path, metadata)
    deploy_inference_service(PredictorSettings(NAME, uri, version), "local", home)
    return path, model, frame[features].to_numpy(dtype=float)


def body(rows: Any) -> bytes:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    return json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}).encode()


def floor_ms(model: Any, rows: Any, repeat: int = 200) -> float:
    """Median in-process ``model.predict`` time: what no server can beat."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        model.predict(rows)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def check_same_answers(url: str, payload: bytes, expected: list[int]) -> None:
    import httpx

    response = httpx.post(
        f"{url}/v2/models/{NAME}/infer",
        content=payload,
        headers={"content-type": "application/json"},
    )
    response.raise_for_status()
    if [int(v) for v in response.json()["outputs"][0]["data"]] != expected:
        raise AssertionError(f"{url} does not answer with the model's own predictions")


def main(args: argparse.Namespace) -> None:
    import numpy as np

    state = Path(os.environ.get("MLOPS_HOME", ROOT / ".mlops")).resolve()
    script = mlserver_venv(state)
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
        work = Path(tmp)
        home = work / ".mlops"
        # The version is signed with this state directory's key, which the server verifies.
        os.environ["MLOPS_HOME"] = str(home)
        model_file, model, rows = prepare(home, work)
        rng = np.random.default_rng(0)
        scenarios = {
            "1 row": rows[rng.integers(0, len(rows), 1)],
            "1000 rows": rows[rng.integers(0, len(rows), 1000)],
        }
        bodies = {}
        for label, matrix in scenarios.items():
            bodies[label] = work / f"{label.replace(' ', '-')}.json"
            bodies[label].write_bytes(body(matrix))
        processes: dict[str, tuple[Any, str]] = {}
        try:
            # Both run at once, idle but for the one under load, and take turns: on a shared
            # machine a slow patch then hits both, not whichever happened to run during it.
            processes["mlops serve"] = start_local(home, work / "local.log", args.workers)
            processes["MLServer"] = start_mlserver(
                script, model_file, work, work / "mlserver.log", args.workers
            )
            drivers = {
                "wrk": lambda url, body_file: run_wrk(
                    wrk, url, body_file, 1, args.concurrency, args.duration
                ),
                "own": lambda url, body_file: run_load(
                    url, body_file, args.concurrency, args.duration
                ),
            }
            runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for label, matrix in scenarios.items():
                expected = model.predict(matrix).astype(int).tolist()
                for _, url in processes.values():
                    check_same_answers(url, bodies[label].read_bytes(), expected)
                    run_load(f"{url}/v2/models/{NAME}/infer", bodies[label], args.concurrency, 2)
                for repeat in range(args.repeat):
                    for driver, drive in drivers.items():
                        for server, (_, url) in processes.items():
                            figures = drive(f"{url}/v2/models/{NAME}/infer", bodies[label])
                            runs.setdefault((driver, label, server), []).append(figures)
                            print(
                                f"{driver:4} {server:12} {label:10} #{repeat + 1} {figures}",
                                file=sys.stderr,
                            )
        finally:
            for process, _ in processes.values():
                stop(process)
        results = {key: median_run(values) for key, values in runs.items()}
        print_table(results, {label: floor_ms(model, m) for label, m in scenarios.items()}, args)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the repeats (errors: the sum)."""
    keys = ("throughput", "p50_ms", "p99_ms")
    median = {key: statistics.median(run[key] for run in runs) for key in keys}
    return {**median, "errors": sum(run["errors"] for run in runs)}


def print_table(
    results: dict[tuple[str, str, str], dict[str, Any]], floors: dict[str, float], args: Any
) -> None:
    print(
        f"\n{args.concurrency} connections (wrk: 1 thread), {args.repeat} runs of "
        f"{args.duration:g} s per driver, server and request size, taking turns (medians), "
        f"loopback, {os.cpu_count()} CPUs; mlops serve --workers {args.workers}, MLServer "
        f"parallel_workers {args.workers}\n"
    )
    header = (
        f"{'driver':6} {'request':10} {'server':12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    for (driver, label, server), r in results.items():
        print(
            f"{driver:6} {label:10} {server:12} {r['throughput']:9.1f} {r['p50_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['errors']:7d}"
        )
    print()
    for driver, label, server in results:
        if server != "mlops serve":
            continue
        ours, theirs = results[(driver, label, server)], results[(driver, label, "MLServer")]
        print(
            f"{driver:6} {label:10} throughput mlops/MLServer "
            f"{ours['throughput'] / theirs['throughput']:.2f}x, p99 mlops/MLServer "
            f"{ours['p99_ms'] / theirs['p99_ms']:.2f}x, in-process model.predict floor "
            f"{floors[label]:.3f} ms"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server, taking turns")
    parser.add_argument("--concurrency", type=int, default=8, help="open connections")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="mlops serve --workers and MLServer parallel_workers [default: the CPUs]",
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.loadgen:
        loadgen_main(arguments)
    else:
        main(arguments)
