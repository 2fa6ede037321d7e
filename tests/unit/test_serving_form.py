"""The web form's page, schema and the frontend's bounds (serving/form.py), without a model server.

The upstream here is a closed port (connection refused) or a listening socket that never answers
(a hung model server); the frontend talks to it over real TCP.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.validation import reference_statistics
from serving.form import (
    FrontendSettings,
    build_frontend,
    form_schema,
    main,
    prefers_html,
)

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("*/*", False),  # curl, httpx, the kubelet's probes
        ("", False),
        ("application/json", False),
        ("application/json, text/html", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html;q=0", False),
        ("text/html;q=nonsense", False),
    ],
)
def test_only_a_client_that_ranks_html_first_gets_the_page(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hung_upstream() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def frontend(tmp_path: Path, upstream_port: int, **settings: object) -> TestClient:
    options = FrontendSettings(
        upstream=f"http://127.0.0.1:{upstream_port}",
        model_name="breast-cancer",
        store_uri=str(tmp_path / "store"),
        **settings,  # type: ignore[arg-type]
    )
    return TestClient(build_frontend(options), base_url="http://127.0.0.1")


def test_root_answers_json_to_probes_and_the_page_to_browsers(
    tmp_path: Path, closed_port: int
) -> None:
    with frontend(tmp_path, closed_port) as client:
        probe = client.get("/", headers={"accept": "*/*"})
        assert probe.status_code == 200 and probe.json() == {"status": "alive"}
        assert probe.headers["vary"] == "Accept"
        page = client.get("/", headers={"accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # The CSP allows exactly the inlined script and style, by their sha256.
    policy = page.headers["content-security-policy"]
    for tag in ("script", "style"):
        inline = re.search(rf"<{tag}>(.*?)</{tag}>", page.text, re.S)
        assert inline is not None
        digest = base64.b64encode(hashlib.sha256(inline.group(1).encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # nothing from elsewhere


def test_schema_without_a_published_version_is_one_503_line(
    tmp_path: Path, closed_port: int
) -> None:
    with frontend(tmp_path, closed_port) as client:
        answer = client.get("/form/schema")
    assert answer.status_code == 503
    assert answer.json() == {
        "error": f"the store {tmp_path / 'store'} holds no version of 'breast-cancer' yet"
    }


def test_schema_of_a_version_published_before_ranges_and_examples(
    breast_cancer: pd.DataFrame,
) -> None:
    names = list(breast_cancer.columns.drop("target"))
    old = form_schema("m", "3", {"feature_names": names}, names)
    assert old["features"][0] == {
        "name": names[0],
        "type": "numeric",  # a version published before feature_types: all numeric
        "min": None,
        "max": None,
        "mean": None,
    }
    assert old["examples"] == [] and old["classes"] is None and old["input_kind"] == "tensor"
    metadata = {"reference_statistics": reference_statistics(breast_cancer, "target")}
    new = form_schema("m", "4", metadata, names)
    assert new["classes"] == [0, 1]
    first = breast_cancer[breast_cancer["target"] == 0].iloc[0]
    assert new["examples"][0] == {"label": 0, "values": first[names].astype(float).tolist()}
    assert new["class_names"] == ["0", "1"]


def test_schema_of_a_table_names_categories_and_classes() -> None:
    from tests.integration.table_models import fit_mixed, mixed_table, table_metadata

    frame = mixed_table()
    metadata = table_metadata(fit_mixed(frame), frame)
    metadata["class_names"] = ["High risk", "Low risk", "Medium"]
    schema = form_schema("m", "1", metadata, metadata["feature_names"])
    assert schema["input_kind"] == "dataframe"
    colour = schema["features"][1]
    assert colour == {
        "name": "colour",
        "type": "categorical",
        "min": None,
        "max": None,
        "mean": None,
        "categories": ["blue", "green", "red"],
    }
    assert schema["features"][0]["type"] == "numeric" and schema["features"][0]["min"] < 60
    assert schema["classes"] == ["high", "low", "mid"]
    assert schema["class_names"] == ["High risk", "Low risk", "Medium"]
    assert [len(e["values"]) for e in schema["examples"]] == [4, 4, 4]


def test_a_body_over_the_limit_is_refused_before_it_is_forwarded(
    tmp_path: Path, hung_upstream: int
) -> None:
    # Forwarded, the request would wait for the hung upstream; 413 comes at once instead.
    with frontend(tmp_path, hung_upstream, max_body_bytes=1024) as client:
        answer = client.post("/v2/models/breast-cancer/infer", content=b"x" * 2048)
    assert answer.status_code == 413
    assert "the limit is 1024 bytes" in answer.json()["error"]


def test_a_hung_model_server_is_a_504_after_the_timeout(tmp_path: Path, hung_upstream: int) -> None:
    with frontend(tmp_path, hung_upstream, timeout_s=0.3) as client:
        answer = client.post("/v2/models/breast-cancer/infer", json={"inputs": []})
    assert answer.status_code == 504
    assert answer.json()["error"].endswith("did not answer in time")


def test_an_unreachable_model_server_is_a_502_naming_it(tmp_path: Path, closed_port: int) -> None:
    with frontend(tmp_path, closed_port) as client:
        answer = client.get("/v2/models/breast-cancer")
    assert answer.status_code == 502
    assert answer.json()["error"].startswith(
        f"cannot reach the model server at http://127.0.0.1:{closed_port}"
    )


def test_only_the_served_model_and_its_two_calls_are_forwarded(
    tmp_path: Path, closed_port: int
) -> None:
    with frontend(tmp_path, closed_port) as client:
        other = client.post("/v2/models/other/infer", json={"inputs": []})
        assert other.status_code == 404
        assert other.json()["error"] == (
            "model 'other' is not served here: this frontend serves 'breast-cancer'"
        )
        for path in ("/v2/repository/models/breast-cancer/unload", "/metrics", "/v1/models"):
            assert client.post(path).status_code in (404, 405), path


def test_with_a_token_the_page_is_open_and_the_calls_are_not(
    tmp_path: Path, closed_port: int
) -> None:
    with frontend(tmp_path, closed_port, auth_token="t" * 32) as client:
        assert client.get("/", headers={"accept": BROWSER_ACCEPT}).status_code == 200
        assert client.get("/form/schema").status_code == 401
        assert client.post("/v2/models/breast-cancer/infer", json={}).status_code == 401


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream", "breast-cancer.ns"], "--upstream must be an http(s) URL with a host"),
        (["--upstream", "http://isvc/v2/models"], "--upstream is the server's base URL (no path)"),
        (["--upstream", "http://isvc", "--port", "0"], "--port must be within 1..65535"),
        (["--upstream", "http://isvc", "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error
