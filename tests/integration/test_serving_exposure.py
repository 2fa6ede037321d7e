"""`mlops serve` facing careless or hostile clients: repository routes, auth, labels, limits."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.serving_helpers import (
    NAME,
    Served,
    ServerProcess,
    deploy,
    fit,
    free_port,
    mlops,
    publish,
    start_server,
    v2_body,
    wait_for,
)

# The `canary_server` fixture: versions 1 and 2 (a 10% canary) served by one `mlops serve`.
pytest_plugins = ["tests.integration.serving_fixtures"]

TOKEN = "test-token-0123456789abcdef"


def one_version(home: Path, frame: pd.DataFrame, tmp: Path) -> Path:
    version, uri = publish(home, fit(frame, 1.0), frame, tmp)
    deploy(home, version, uri)
    return home


def test_no_request_can_unload_the_model_not_even_a_cross_site_form(canary_server: Served) -> None:
    repository = f"{canary_server.url}/v2/repository/models/{NAME}"
    attempts = [
        httpx.post(f"{repository}/unload"),
        # What any web page can send without a CORS preflight.
        httpx.post(
            f"{repository}/unload",
            content=b"x",
            headers={
                "content-type": "text/plain",
                "origin": "http://evil.example",
                "sec-fetch-site": "cross-site",
            },
        ),
        httpx.post(f"{repository}/load"),
        httpx.post(f"{canary_server.url}/v2/repository/index"),
    ]
    assert [r.status_code for r in attempts] == [404, 403, 404, 404]
    assert "model repository extension is not served" in attempts[0].json()["error"]
    assert httpx.get(f"{canary_server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{canary_server.url}/v2/models/{NAME}/ready").status_code == 200
    answer = httpx.post(canary_server.infer_url(), json=v2_body(canary_server.rows[:1]))
    assert answer.status_code == 200
    extensions = httpx.get(f"{canary_server.url}/v2").json()["extensions"]
    assert "model_repository_extension" not in extensions


def test_a_loopback_server_answers_only_requests_addressed_to_loopback(
    canary_server: Served,
) -> None:
    body = v2_body(canary_server.rows[:1])
    # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1.
    rebound = httpx.post(canary_server.infer_url(), json=body, headers={"host": "evil.example"})
    assert rebound.status_code == 400 and rebound.text == "Invalid host header"
    port = canary_server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        answer = httpx.post(canary_server.infer_url(), json=body, headers={"host": host})
        assert answer.status_code == 200, host


def test_readiness_is_false_exactly_when_no_revision_takes_traffic(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    from kserve.model_repository import ModelRepository

    from serving.runtime import CanaryRouter
    from serving.server import LocalDataPlane

    home = one_version(tmp_path / ".mlops", breast_cancer, tmp_path)
    registry = ModelRepository()
    plane = LocalDataPlane(model_registry=registry)
    assert asyncio.run(plane.ready()) is False  # nothing registered
    router = CanaryRouter(NAME, home)
    registry.update(router)
    assert asyncio.run(plane.ready()) is False  # registered, no revision loaded
    assert router.load()
    assert asyncio.run(plane.ready()) is True
    registry.unload(NAME)
    assert asyncio.run(plane.ready()) is False


@pytest.fixture(scope="module")
def token_server(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame
) -> ServerProcess:
    home = one_version(
        tmp_path_factory.mktemp("auth") / ".mlops", breast_cancer, tmp_path_factory.mktemp("m")
    )
    server = start_server(home, env={"MLOPS_SERVING_TOKEN": TOKEN})
    yield server
    server.stop()


def test_with_a_token_only_the_health_probes_are_open(
    token_server: ServerProcess, breast_cancer: pd.DataFrame
) -> None:
    url = token_server.url
    body = v2_body(breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)[:2])
    for probe in ("/v2/health/live", "/v2/health/ready", "/"):
        assert httpx.get(f"{url}{probe}").status_code == 200, probe
    missing = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "missing 'Authorization: Bearer <token>' header" in missing.json()["error"]
    wrong = httpx.post(
        f"{url}/v2/models/{NAME}/infer", json=body, headers={"authorization": "Bearer " + "x" * 26}
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "the bearer token is wrong"
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = httpx.get(f"{url}/metrics", headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and "'Bearer <token>'" in basic.json()["error"]
    for path in ("/metrics", f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}", "/v2"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, headers=auth).status_code == 200
    assert httpx.get(f"{url}/metrics", headers=auth).status_code == 200


def test_mlops_predict_and_drift_send_the_token(token_server: ServerProcess, tmp_path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([[1.0] * 30]))
    home = tmp_path / "client-home"
    refused = mlops(home, "predict", str(rows), "--url", token_server.url)
    assert refused.returncode == 1
    assert "answered 401" in refused.stderr and "MLOPS_SERVING_TOKEN" in refused.stderr
    by_env = mlops(home, "predict", str(rows), "--url", token_server.url, MLOPS_SERVING_TOKEN=TOKEN)
    assert by_env.returncode == 0 and "answered 1 rows" in by_env.stdout
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    by_file = mlops(home, "drift", "--url", token_server.url, "--auth-token-file", str(token_file))
    assert by_file.returncode == 0, by_file.stderr
    assert "breast-cancer-predictor-00001" in by_file.stdout


def test_serve_refuses_a_non_loopback_host_without_a_token(tmp_path: Path) -> None:
    port = str(free_port())
    open_host = mlops(tmp_path / ".mlops", "serve", "--host", "0.0.0.0", "--port", port)
    assert open_host.returncode == 1
    assert "error: refusing to listen on 0.0.0.0 without authentication" in open_host.stderr, (
        open_host.stderr
    )
    assert "Traceback" not in open_host.stderr
    # Said explicitly, the exposure check passes (and the start stops at what is missing next).
    allowed = mlops(
        tmp_path / ".mlops", "serve", "--host", "0.0.0.0", "--port", port, "--allow-unauthenticated"
    )
    assert allowed.returncode == 1 and "is not deployed locally" in allowed.stderr
    short = mlops(tmp_path / ".mlops", "serve", "--port", port, MLOPS_SERVING_TOKEN="short")
    assert short.returncode == 1
    assert "the auth token from MLOPS_SERVING_TOKEN must be at least 16" in short.stderr
    no_time = mlops(tmp_path / ".mlops", "serve", "--port", port, "--header-timeout", "0")
    assert no_time.returncode == 1
    assert "error: --header-timeout must be within (0, 3600] seconds" in no_time.stderr


def metric_lines(url: str) -> tuple[int, int]:
    """``(samples, bytes)`` of ``/metrics``."""
    text = httpx.get(f"{url}/metrics").text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#")), len(text)


def test_unknown_model_names_do_not_add_metric_series(canary_server: Served) -> None:
    with httpx.Client(base_url=canary_server.url) as client:
        client.post("/v2/models/warm-up/infer", json={})  # the one `_unknown` series set
        samples, size = metric_lines(canary_server.url)
        for i in range(3000):
            path = f"/v2/models/m-{i}/infer" if i % 2 else f"/v1/models/m-{i}:predict"
            assert client.post(path, json={}).status_code == 404
    after_samples, after_size = metric_lines(canary_server.url)
    # The counters move; no series is added (slack for series of requests made meanwhile).
    assert after_samples - samples <= 20, (samples, after_samples)
    assert after_size - size < 4096, (size, after_size)
    assert 'model="m-1"' not in httpx.get(f"{canary_server.url}/metrics").text


def test_a_request_id_that_is_too_long_or_not_a_token_is_replaced(canary_server: Served) -> None:
    body = v2_body(canary_server.rows[:1])
    for given in ("a" * 129, "<script>alert(1)</script>", "id with spaces"):
        response = httpx.post(canary_server.infer_url(), json=body, headers={"x-request-id": given})
        assert response.status_code == 200
        replaced = response.headers["x-request-id"]
        assert replaced != given and len(replaced) == 32, replaced
        wait_for(lambda r=replaced: any(x["request_id"] == r for x in canary_server.log_lines()))
    assert not any(
        given in line["request_id"]
        for line in canary_server.log_lines()
        for given in ("aaaa" * 32, "<script>")
    )
    kept = httpx.post(canary_server.infer_url(), json=body, headers={"x-request-id": "a" * 128})
    assert kept.headers["x-request-id"] == "a" * 128


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server closed the connection before all was sent
            pass
        return sock.recv(4096)


def test_oversized_request_headers_get_431(canary_server: Served) -> None:
    one_big = b"x-request-id: " + b"a" * 64 * 1024 + b"\r\n"
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"b" * 200) for i in range(100))  # 20 KB in all
    for headers in (one_big, many):
        answer = raw_request(
            canary_server.url, b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"request headers are over 16384 bytes" in answer
    # A megabyte of header is refused before it is all read, and the server keeps serving.
    huge = b"GET /v2/health/ready HTTP/1.1\r\nx-a: " + b"a" * 1024 * 1024
    assert raw_request(canary_server.url, huge).startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{canary_server.url}/v2/health/ready").status_code == 200


def _lower_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_slow_clients_do_not_starve_a_client_that_sends_its_request(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    """300 slowloris connections against a server allowed 256 open files."""
    home = one_version(tmp_path / ".mlops", breast_cancer, tmp_path)
    server = start_server(
        home,
        "--header-timeout",
        "3",
        "--body-timeout",
        "2",
        preexec_fn=_lower_open_file_limit,
    )
    host, port = server.url.removeprefix("http://").split(":")
    body = v2_body(breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)[:1])

    async def slow_client() -> bytes:
        """Headers one line at a time, never finished; returns what the server answered."""
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return b"closed"
        writer.write(b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(40):
                try:
                    return await asyncio.wait_for(reader.read(4096), 0.5)
                except TimeoutError:
                    writer.write(b"x-slow: 1\r\n")
                    await writer.drain()
        except OSError:
            return b"closed"
        return b"never answered"

    async def slow_body() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
        )
        return await asyncio.wait_for(reader.read(4096), 10)

    async def scenario() -> tuple[list[int], list[bytes], bytes]:
        slow = [asyncio.create_task(slow_client()) for _ in range(300)]
        body_task = asyncio.create_task(slow_body())
        await asyncio.sleep(1.5)
        statuses = []
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(20):  # a fresh connection for each request
                response = await client.post(
                    f"{server.url}/v2/models/{NAME}/infer",
                    json=body,
                    headers={"connection": "close"},
                )
                statuses.append(response.status_code)
        return statuses, await asyncio.gather(*slow), await body_task

    try:
        statuses, slow_answers, body_answer = asyncio.run(scenario())
    finally:
        server.stop()
    assert statuses == [200] * 20
    # Every slow client was cut off: evicted for a newer connection, or timed out with a 408.
    outcomes = Counter(
        "408" if a.startswith(b"HTTP/1.1 408") else "closed" if a in (b"", b"closed") else a[:40]
        for a in slow_answers
    )
    assert set(outcomes) <= {"408", "closed"}, outcomes
    assert outcomes["408"] > 0, outcomes
    assert body_answer.startswith(b"HTTP/1.1 408"), body_answer
    assert b"request body not received within 2 s" in body_answer
    # Cut-off requests are one log line each, not tracebacks.
    assert "Traceback" not in server.errors.read_text()
    assert any(
        line["status"] == 408 and "did not arrive in full" in line["error"]
        for line in map(json.loads, server.log.read_text().splitlines())
    )


def test_sigterm_answers_requests_on_keep_alive_connections_then_exits(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    home = one_version(tmp_path / ".mlops", breast_cancer, tmp_path)
    server = start_server(home)
    rows = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)
    body = json.dumps(v2_body(rows[:500])).encode()
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=20) as http:  # keep-alive: one connection, reused
            while not stop.is_set():
                try:
                    response = http.post(f"{server.url}/v2/models/{NAME}/infer", content=body)
                    outcomes.append(str(response.status_code))
                except httpx.ConnectError:
                    outcomes.append("refused")  # after the drain: nothing half-sent
                    return
                except httpx.HTTPError as err:
                    outcomes.append(repr(err))
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(outcomes) >= 40, timeout_s=30)
    server.process.send_signal(15)
    try:
        assert server.process.wait(timeout=30) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop()
    counts = Counter(outcomes)
    assert set(counts) == {"200", "refused"}, counts


def test_the_state_keeps_the_url_of_the_server_that_runs(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    from serving import local_controller

    home = one_version(tmp_path / ".mlops", breast_cancer, tmp_path)

    def recorded() -> str | None:
        return local_controller.read_state(NAME, home).get("server", {}).get("url")

    first = start_server(home)
    try:
        assert recorded() == first.url
        second = start_server(home)
        second.stop()
        assert recorded() == first.url
        assert httpx.get(f"{first.url}/v2/health/ready").status_code == 200
    finally:
        first.stop()
    # Nothing runs: no URL, and the status URLs are the cluster-style ones again.
    assert recorded() is None
    isvc = local_controller.read_state(NAME, home)["inferenceService"]
    assert isvc["status"]["url"] == f"http://{NAME}.default.example.com"
    assert f"http://127.0.0.1:{first.url.rsplit(':', 1)[1]}" not in json.dumps(isvc)


def test_a_server_that_fails_to_start_records_no_url(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    from serving import local_controller

    home = tmp_path / ".mlops"
    version, uri = publish(home, fit(breast_cancer, 1.0), breast_cancer, tmp_path)
    deploy(home, version, uri)
    # A revision that fails to load no longer stops a start (issue 19 item 7): a taken port
    # does.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = mlops(home, "serve", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1 and "cannot listen on" in result.stderr, result.stderr
    assert "server" not in local_controller.read_state(NAME, home)
