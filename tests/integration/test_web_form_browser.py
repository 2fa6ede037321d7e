"""The web form in a real headless Chromium, against a real `mlops serve` and the frontend.

Debian's `chromium` driven by `playwright` (no browser download: ``executable_path``). Without
the browser these tests FAIL, so `make test` cannot pass without a browser run; only
``MLOPS_BROWSER_OPTIONAL=1`` turns that into a skip. `make browser` installs chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import find_object, render_overlay
from tests.integration.kserve_runtime import Runtime, start_runtime
from tests.integration.s3_server import S3Server
from tests.integration.serving_helpers import (
    NAME,
    ServerProcess,
    deploy,
    fit,
    free_port,
    publish,
    start_server,
    stop_process,
    v2_body,
)
from tests.integration.table_models import LABEL, fit_mixed, mixed_table, publish_table

CHROMIUM = os.environ.get("MLOPS_CHROMIUM", "/usr/bin/chromium")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TOKEN = "form-test-token-" + "q" * 20


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -c constraints.txt -e '.[dev]'"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is missing: run `make browser` (or `sudo apt-get install -y chromium`)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module; fails (not skips) when there is none."""
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("MLOPS_BROWSER_OPTIONAL") == "1":
            pytest.skip(missing)
        pytest.fail(f"the web form tests need a browser: {missing}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass(frozen=True)
class Served:
    server: ServerProcess
    home: Path
    served_model: Any
    rows: np.ndarray


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame
) -> Iterator[Served]:
    """Versions 1 and 2 published and deployed in turn (2 takes all traffic), served."""
    home = tmp_path_factory.mktemp("form") / ".mlops"
    tmp = tmp_path_factory.mktemp("form-models")
    models = [fit(breast_cancer, 1.0), fit(breast_cancer, 0.001)]
    for model in models:
        deploy(home, *publish(home, model, breast_cancer, tmp))
    server = start_server(home)
    rows = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)
    try:
        yield Served(server, home, models[1], rows)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def frontend(served: Served) -> Iterator[str]:
    """`python -m serving.form` in front of the server, with its own bearer token."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = served.home / f"frontend-{port}.log"
    env = {**os.environ, "MLOPS_SERVING_TOKEN": TOKEN}
    command = [sys.executable, "-m", "serving.form", "--upstream", served.server.url]
    command += ["--store-uri", str(served.home / "store"), "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process)


def _first_row_of_class(breast_cancer: pd.DataFrame, label: int) -> np.ndarray:
    rows = breast_cancer[breast_cancer["target"] == label].drop(columns=["target"])
    return rows.to_numpy(dtype=float)[0]


def test_fill_an_example_predict_and_read_the_version(
    browser: Any, served: Served, breast_cancer: pd.DataFrame, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(served.server.url + "/")
    page.wait_for_selector("#feature-29")
    assert page.inner_text("#model-name") == NAME
    assert page.inner_text("label[for=feature-0]") == "mean radius"
    assert page.inner_text("#hint-0") == "training range 6.981 to 28.11"

    page.select_option("#example", "1")  # the first training row of class 1
    page.click("#fill-example")
    row = _first_row_of_class(breast_cancer, 1)
    typed = [float(page.input_value(f"#feature-{i}")) for i in range(30)]
    assert typed == row.tolist()
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")

    probabilities = served.served_model.predict_proba(row[None, :])[0]
    best = int(np.argmax(probabilities))
    assert page.inner_text("#predicted-class") == str(best)
    assert page.inner_text("#probability") == f"{100 * probabilities[best]:.1f} %"
    assert page.inner_text("#model-version") == "2"
    screenshot = tmp_path / "web-form.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert errors == []
    page.close()


def test_an_empty_field_is_named_and_nothing_is_sent(browser: Any, served: Served) -> None:
    page = browser.new_page()
    page.goto(served.server.url + "/")
    page.wait_for_selector("#feature-29")
    page.click("#fill-example")
    page.fill("#feature-3", "")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == (
        "'mean area' is empty: enter a number (training range 143.5 to 2501)"
    )
    assert page.get_attribute("#feature-3", "aria-invalid") == "true"
    assert page.inner_text("#hint-3") == "empty: enter a number"  # beside the field too
    assert page.is_hidden("#result")
    assert not [url for url in sent if url.endswith("/infer")]
    page.fill("#feature-3", "1e400")  # not a finite number
    page.click("#predict")
    assert page.inner_text("#error").startswith("'mean area' is not a number")
    page.fill("#feature-3", "1001")
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_hidden("#error") and page.inner_text("#hint-3") == "training range 143.5 to 2501"
    page.close()


def test_the_frontend_asks_for_its_token_and_keeps_it_out_of_the_url(
    browser: Any, frontend: str, served: Served
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(frontend + "/")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("the server answered 401: missing")
    assert page.get_attribute("#token-box", "open") is not None

    page.fill("#token", "wrong-token-" + "x" * 20)
    page.click("#save-token")
    # A locator's assertion retries in Playwright's own script world: no string is evaluated in
    # the page, whose CSP allows no eval (wait_for_function with a string met it: flaky).
    expect(page.locator("#error")).to_have_text(
        "the server answered 401: the bearer token is wrong"
    )

    page.fill("#token", TOKEN)
    page.click("#save-token")
    page.wait_for_selector("#feature-29")
    assert page.evaluate("sessionStorage.getItem('mlops-serving-token')") == TOKEN
    page.click("#fill-example")
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#model-version") == "2"
    assert page.is_hidden("#error")
    assert TOKEN not in page.url and page.url == frontend + "/"
    # A new tab of another session starts without the token.
    other = browser.new_context().new_page()
    other.goto(frontend + "/")
    assert other.evaluate("sessionStorage.getItem('mlops-serving-token')") is None
    context.close()


def _in_process_frontend(served: Served, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from serving.form import FrontendSettings, build_frontend

    options = FrontendSettings(
        upstream=served.server.url,
        model_name=NAME,
        store_uri=str(served.home / "store"),
        **settings,
    )
    return TestClient(build_frontend(options), base_url="http://127.0.0.1")


def test_the_frontend_forwards_infer_and_metadata_as_the_server_answers(served: Served) -> None:
    body = v2_body(served.rows[:3], predict_proba=True)
    direct = httpx.post(f"{served.server.url}/v2/models/{NAME}/infer", json=body)
    with _in_process_frontend(served) as client:
        proxied = client.post(
            f"/v2/models/{NAME}/infer", json=body, headers={"authorization": "Bearer mine"}
        )
        metadata = client.get(f"/v2/models/{NAME}")
        schema = client.get("/form/schema").json()
    assert proxied.status_code == 200
    assert proxied.json()["outputs"] == direct.json()["outputs"]
    assert proxied.json()["model_version"] == "2"
    assert proxied.headers["x-mlops-model-version"] == "2"
    assert metadata.status_code == 200 and metadata.json()["name"] == NAME
    assert schema["version"] == "2" and len(schema["features"]) == 30
    assert [e["label"] for e in schema["examples"]] == [0, 1]


def test_the_frontend_reads_the_form_of_the_newest_version_from_s3(
    s3_server: S3Server,
    tmp_path: Path,
    breast_cancer: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from mlops.store import open_store
    from serving.form import FrontendSettings, build_frontend

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store_uri = f"s3://models/form-{os.getpid()}"
    for c in (1.0, 0.01):
        publish(tmp_path, fit(breast_cancer, c), breast_cancer, tmp_path, open_store(store_uri))
    settings = FrontendSettings(upstream="http://127.0.0.1:9", model_name=NAME, store_uri=store_uri)
    with TestClient(build_frontend(settings), base_url="http://127.0.0.1") as client:
        schema = client.get("/form/schema")
        assert schema.status_code == 200, schema.text
        assert schema.json()["version"] == "2"
        assert [e["label"] for e in schema.json()["examples"]] == [0, 1]
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_server.secret_key)
        refused = client.get("/form/schema")
    assert refused.status_code == 503
    assert refused.json()["error"].endswith(
        "refused access to bucket 'models': AccessDenied (Access denied); "
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


# --- A mixed table (categorical column, missing values, string labels), and the cluster's way:
# KServe's sklearn runtime behind the frontend started with the web-form Deployment's args.


@dataclass(frozen=True)
class Table:
    home: Path
    model: Any
    features: pd.DataFrame
    server: ServerProcess


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    home = tmp_path_factory.mktemp("form-table") / ".mlops"
    frame = mixed_table()
    model = fit_mixed(frame)
    metadata_names = {"high": "High", "low": "Low", "mid": "Middle"}
    version, uri = publish_table(home / "store", NAME, model, frame, home.parent, metadata_names)
    deploy(home, version, uri)
    server = start_server(home, "--workers", "1")
    try:
        yield Table(home, model, frame.drop(columns=[LABEL]), server)
    finally:
        server.stop()


NAMESPACE = "kubeflow-user"


def _cluster_frontend_args(upstream: str, store: Path, port: int) -> list[str]:
    """The web-form Deployment's args (dev overlay), pointed at this machine's servers.

    ``$(POD_NAMESPACE)`` is expanded as the kubelet does, to the dev overlay's namespace.
    """
    deployment = find_object(render_overlay("dev"), "Deployment", "web-form")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.form"]
    local = {
        "--upstream": upstream,
        "--store-uri": str(store),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        expanded = arg.replace("$(POD_NAMESPACE)", NAMESPACE)
        args.append(f"{flag}={local[flag]}" if flag in local else expanded)
    assert "--model-name=breast-cancer" in args and "--allow-unauthenticated" in args
    assert f"--inference-service-namespace={NAMESPACE}" in args
    return args


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Kubernetes API with KServe's status logic (tests/unit/kserve_status_fake.py), which the
    frontend reads the served version from, as it reads the cluster's with its token."""
    from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig

    with serve(FakeCluster()) as url:
        yield write_kubeconfig(url, tmp_path_factory.mktemp("kube") / "kubeconfig")


def _deploy_to_cluster(kubeconfig: Path, store: Path, version: int, tmp: Path) -> None:
    from mlops.store import LocalStore
    from serving.deploy import deploy_inference_service
    from serving.inference_service import PredictorSettings

    settings = PredictorSettings(
        name=NAME,
        namespace=NAMESPACE,
        storage_uri=LocalStore(store).version_uri(NAME, version),
        model_version=version,
    )
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        deploy_inference_service(settings, "kubernetes", tmp, 30)
    finally:
        if previous is None:
            del os.environ["KUBECONFIG"]
        else:
            os.environ["KUBECONFIG"] = previous


def _start_frontend(
    args: list[str], log: Path, kubeconfig: Path
) -> tuple[subprocess.Popen[bytes], str]:
    url = "http://127.0.0.1:" + next(a for a in args if a.startswith("--port=")).split("=")[1]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}  # MLOPS_SIGNING_KEY: the tests' key
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.form", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster_form(table: Table, kubeconfig: Path) -> Iterator[tuple[str, Runtime]]:
    """KServe's sklearn runtime on the stored version, the frontend as the cluster runs it."""
    version_dir = table.home / "store" / NAME / "1"
    _deploy_to_cluster(kubeconfig, table.home / "store", 1, table.home)
    runtime = start_runtime(version_dir, NAME, table.home)
    args = _cluster_frontend_args(runtime.url, table.home / "store", free_port())
    process, url = _start_frontend(args, table.home / "cluster-frontend.log", kubeconfig)
    try:
        yield url, runtime
    finally:
        stop_process(process)
        runtime.stop()


def _fill_the_mixed_case(page: Any) -> dict[str, Any]:
    """Choose a colour, leave one number missing: what the model takes."""
    page.wait_for_selector("#feature-3")
    assert page.eval_on_selector("#feature-1", "e => e.tagName") == "SELECT"
    options = page.eval_on_selector_all("#feature-1 option", "os => os.map(o => o.textContent)")
    assert options == ["(missing)", "blue", "green", "red"]
    page.select_option("#feature-1", "red")
    page.fill("#feature-0", "95")
    page.fill("#feature-2", "180")
    page.fill("#feature-3", "40")
    return {"weight": 95.0, "colour": "red", "height": 180.0, "age": 40.0}


def test_a_categorical_feature_is_a_choice_list_and_the_class_name_is_shown(
    browser: Any, table: Table
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.method == "POST" else None)
    page.goto(table.server.url + "/")
    case = _fill_the_mixed_case(page)
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    row = pd.DataFrame([case])
    probabilities = table.model.predict_proba(row)[0]
    best = int(np.argmax(probabilities))
    names = {"high": "High", "low": "Low", "mid": "Middle"}
    assert page.inner_text("#predicted-class") == names[table.model.classes_[best]]
    assert page.inner_text("#probability") == f"{100 * probabilities[best]:.1f} %"
    (body,) = sent
    assert body["parameters"] == {"content_type": "pd", "predict_proba": True}
    assert [(i["name"], i["datatype"], i["data"]) for i in body["inputs"]] == [
        ("weight", "FP64", [95]),
        ("colour", "BYTES", ["red"]),
        ("height", "FP64", [180]),
        ("age", "FP64", [40]),
    ]
    assert errors == []
    page.close()


def test_the_cluster_form_shows_the_runtimes_label_and_no_probability(
    browser: Any, table: Table, cluster_form: tuple[str, Runtime]
) -> None:
    url, _ = cluster_form
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url + "/")
    case = _fill_the_mixed_case(page)
    page.select_option("#feature-1", "")  # (missing): null, imputed by the model
    case["colour"] = None
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    (label,) = table.model.predict(pd.DataFrame([case]))
    names = {"high": "High", "low": "Low", "mid": "Middle"}
    assert page.inner_text("#predicted-class") == names[label]
    # KServe's sklearnserver ignores parameters.predict_proba and answers the label (issue 18).
    assert page.inner_text("#probability") == "not reported: the server answered the label only"
    assert page.inner_text("#model-version") == "not reported by the server"
    assert errors == []
    page.close()


def test_the_cluster_form_of_the_numeric_model_shows_its_label(
    browser: Any, served: Served, breast_cancer: pd.DataFrame, tmp_path: Path
) -> None:
    """The breast-cancer form against the runtime: a label, not the first class at 0 or 100 %."""
    from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig

    version_dir = served.home / "store" / NAME / "2"
    runtime = start_runtime(version_dir, NAME, tmp_path)
    args = _cluster_frontend_args(runtime.url, served.home / "store", free_port())
    with serve(FakeCluster()) as api:
        kubeconfig = write_kubeconfig(api, tmp_path / "kubeconfig")
        _deploy_to_cluster(kubeconfig, served.home / "store", 2, tmp_path)
        process, url = _start_frontend(args, tmp_path / "frontend.log", kubeconfig)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#feature-29")
            assert page.inner_text("#schema-note").endswith("model version 2.")
            page.select_option("#example", "1")
            page.click("#fill-example")
            page.click("#predict")
            page.wait_for_selector("#result:not([hidden])")
            row = _first_row_of_class(breast_cancer, 1)
            (label,) = served.served_model.predict(row[None, :])
            assert page.inner_text("#predicted-class") == str(label)
            assert page.inner_text("#probability").startswith("not reported")
            page.close()
        finally:
            stop_process(process)
            runtime.stop()


def test_docs_draw_swagger_ui_with_no_policy_violation(browser: Any, served: Served) -> None:
    page = browser.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.on("pageerror", lambda err: messages.append(str(err)))
    page.goto(served.server.url + "/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "ps => ps.map(p => p.textContent)")
    assert "/v2/models/{model_name}/infer" in [p.replace("\u200b", "") for p in paths]
    assert not [p for p in paths if "repository" in p]
    assert not [m for m in messages if "Content Security Policy" in m], messages
    page.close()
