"""`mlops rollout` against a real `mlops serve` under load from concurrent clients.

Every canary is a real model file in the store, registered in MLflow and deployed at 10% as
`mlops run` deploys it; the rollout is the real CLI in a subprocess; the clients send real rows
and count every answer. A good canary is promoted; a degraded one (trained on half-flipped
labels), a slow one and an erroring one are rolled back at the first step, the failing signal
named, the stable revision serving everything, `champion` never moving to them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from mlops import registry
from serving.deploy import sync_aliases
from tests.integration.faulty_models import FailingModel, SlowModel
from tests.integration.serving_helpers import (
    MLOPS,
    NAME,
    deploy,
    fit,
    free_port,
    mlops,
    publish,
    start_server,
    v2_body,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = ("--interval", "2", "--min-requests", "15")


class Setup:
    """The state directory, the server, and how to add a canary."""

    def __init__(self, home: Path, tmp: Path, frame: pd.DataFrame, url: str) -> None:
        self.home, self.tmp, self.frame, self.url = home, tmp, frame, url
        self.tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        self.rows = frame.drop(columns=["target"]).to_numpy(dtype=float)
        self._logged = tmp / "logged.joblib"
        joblib.dump(fit(frame, 1.0), self._logged)

    def add_version(self, model: object, canary: int | None = 10, deployed: bool = True) -> str:
        """Publish, register and deploy ``model`` (a canary when one serves); its version."""
        version, uri = publish(self.home, model, self.frame, self.tmp)  # type: ignore[arg-type]
        run_id = registry.log_training_run(
            self.tracking_uri, NAME, {}, {"f1": 0.9}, self._logged, {}
        )
        registry.register_version(self.tracking_uri, NAME, run_id, version, uri)
        if not deployed:
            return str(version)
        applied = deploy(self.home, version, uri, canary=canary)
        sync_aliases(self.tracking_uri, applied, "local", self.home)
        return str(version)

    def champion(self) -> str | None:
        found = registry.version_of_alias(self.tracking_uri, NAME, registry.CHAMPION)
        return str(found[0]) if found else None

    def traffic(self) -> dict[str, int]:
        from serving import local_controller

        state = local_controller.read_state(NAME, self.home)
        predictor = state["inferenceService"]["status"]["components"]["predictor"]
        versions = {r: str(i["modelVersion"]) for r, i in state["revisions"].items()}
        return {versions[t["revisionName"]]: t["percent"] for t in predictor["traffic"]}

    def rollout(self, *args: str) -> tuple[int, str]:
        done = mlops(self.home, "rollout", "--url", self.url, *args)
        assert done.returncode in (0, 3), done.stdout + done.stderr
        return done.returncode, done.stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("rollout") / ".mlops"
    tmp = tmp_path_factory.mktemp("rollout-models")
    first = Setup(home, tmp, breast_cancer, "")
    first.add_version(fit(breast_cancer, 1.0), canary=None)
    server = start_server(home, env={"PYTHONPATH": str(ROOT)})
    try:
        yield Setup(home, tmp, breast_cancer, server.url)
    finally:
        server.stop()


class Load:
    """Concurrent clients sending one real row per request until stopped; every answer counted."""

    def __init__(self, url: str, rows: np.ndarray, clients: int = 6, rate: float = 25.0) -> None:
        self.url, self.rows, self.rate = f"{url}/v2/models/{NAME}/infer", rows, rate
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, seed: int) -> None:
        pick = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                row = self.rows[pick.integers(len(self.rows))][None, :]
                try:
                    answer = http.post(self.url, json=v2_body(row))
                    found = (answer.status_code, answer.headers.get("x-mlops-model-version", ""))
                except httpx.HTTPError:
                    found = (0, "")
                with self._lock:
                    self.answers.append((time.monotonic(), *found))
                self.stop.wait(1 / self.rate)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def failed(self) -> int:
        return sum(1 for _, s, _ in self.answers if s != 200)

    def failed_after(self, moment: float) -> int:
        return sum(1 for t, s, _ in self.answers if s != 200 and t > moment)

    def versions_after(self, moment: float) -> Counter[str]:
        return Counter(v for t, s, v in self.answers if t > moment and s == 200)


def _last_step(home: Path) -> dict[str, object]:
    lines = (home / "logs" / f"rollout-{NAME}.jsonl").read_text().splitlines()
    return json.loads(next(line for line in reversed(lines) if '"rollout-step"' in line))


def test_degraded_canary_is_rolled_back_at_the_first_step_with_no_failed_request(
    setup: Setup,
) -> None:
    stable = setup.champion()
    noisy = setup.frame.copy()
    flip = np.random.default_rng(0).random(len(noisy)) < 0.5
    noisy.loc[flip, "target"] = 1 - noisy.loc[flip, "target"]
    canary = setup.add_version(fit(noisy, 1.0))
    with Load(setup.url, setup.rows) as load:
        code, out = setup.rollout("--steps", "10,50,100", *FAST)
        ended = time.monotonic()
        time.sleep(0.6)
    assert code == 3, out
    step_lines = [line for line in out.splitlines() if line.startswith("step")]
    assert len(step_lines) == 1 and step_lines[0].rstrip().endswith("rollback"), out
    assert "shadow_agreement" in out.splitlines()[-3] or "probability_divergence" in out
    assert set(_last_step(setup.home)["failing"]) & {"shadow_agreement", "probability_divergence"}
    # Mirroring works in every worker process of `mlops serve` (its thread starts after fork).
    shadow = next(s for s in _last_step(setup.home)["signals"] if s["name"] == "shadow_agreement")
    assert shadow["value"] is not None and shadow["value"] < 0.9, shadow
    assert load.failed() == 0
    assert setup.traffic()[stable or ""] == 100 and setup.traffic()[canary] == 0
    assert set(load.versions_after(ended + 0.5)) == {stable}
    assert setup.champion() == stable


def test_erroring_canary_is_rolled_back_naming_the_error_rate(setup: Setup) -> None:
    stable = setup.champion()
    canary = setup.add_version(FailingModel(fit(setup.frame, 1.0)))
    with Load(setup.url, setup.rows) as load:
        code, out = setup.rollout("--steps", "10,100", *FAST)
        ended = time.monotonic()
        time.sleep(0.6)
    assert code == 3, out
    assert "error_rate" in _last_step(setup.home)["failing"], out
    assert load.failed() > 0  # the canary's own answers, while it took traffic
    assert load.failed_after(ended) == 0
    assert load.versions_after(ended + 0.5).keys() == {stable}
    assert setup.traffic()[canary] == 0
    assert setup.champion() == stable


def test_slow_canary_is_rolled_back_naming_the_p99_latency(setup: Setup) -> None:
    stable = setup.champion()
    # Clearly slower on a loaded machine too: a stable p99 of 130 ms made +250 ms only 1.9x.
    canary = setup.add_version(SlowModel(fit(setup.frame, 1.0), delay_s=1.0))
    with Load(setup.url, setup.rows) as load:
        code, out = setup.rollout("--steps", "10,100", *FAST)
    assert code == 3, out
    assert "p99_latency" in _last_step(setup.home)["failing"], out
    assert load.failed() == 0
    assert setup.traffic()[canary] == 0 and setup.champion() == stable


def test_canary_without_traffic_is_held_then_rolled_back(setup: Setup) -> None:
    stable = setup.champion()
    canary = setup.add_version(fit(setup.frame, 0.5))
    code, out = setup.rollout("--steps", "10,100", "--interval", "1", "--max-holds", "1")
    assert code == 3, out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("step")] == [
        "hold",
        "rollback",
    ] or out.count("-> hold") == 2, out
    assert "not enough traffic" in out
    assert setup.traffic()[canary] == 0 and setup.champion() == stable


def test_run_with_rollout_auto_refuses_before_training_when_no_server_answers(
    setup: Setup, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    versions = sorted((setup.home / "store" / NAME).iterdir())
    done = mlops(setup.home, "run", "--rollout", "auto", MLOPS_SERVING_URL=dead)
    assert done.returncode == 1
    assert f"no server answers at {dead}" in done.stderr and "Traceback" not in done.stderr
    assert sorted((setup.home / "store" / NAME).iterdir()) == versions


def test_deploy_refuses_a_version_that_is_not_in_the_store(setup: Setup) -> None:
    before = setup.traffic()
    done = mlops(setup.home, "deploy", "99")
    assert done.returncode == 1 and "has no version 99 in the store" in done.stderr
    assert setup.traffic() == before


def test_good_canary_is_promoted_with_no_failed_request(setup: Setup) -> None:
    canary = setup.add_version(fit(setup.frame, 0.5), deployed=False)
    deployed = mlops(setup.home, "deploy", canary, "--canary-percent", "10")
    assert deployed.returncode == 0, deployed.stderr
    assert setup.traffic()[canary] == 10 and setup.champion() != canary
    with Load(setup.url, setup.rows) as load:
        # Input drift is judged on >= 50 canary rows: the 50% window has them (a promote needs
        # every model signal judged once); the last step, 100, is the promote itself.
        code, out = setup.rollout("--steps", "10,50,100", *FAST, "--min-drift-rows", "50")
        ended = time.monotonic()
        time.sleep(0.6)
    assert code == 0, out
    assert out.count("-> promote-step") == 2, out
    assert load.failed() == 0
    assert setup.traffic()[canary] == 100
    assert set(load.versions_after(ended + 0.5)) == {canary}
    assert setup.champion() == canary
    reports = sorted((setup.home / "rollouts").glob(f"*-v{canary}-promoted.html"))
    assert reports and reports[-1].read_text().count("<svg") == 7  # one per signal
    from serving import local_controller

    isvc = local_controller.read_state(NAME, setup.home)["inferenceService"]
    recorded = json.loads(isvc["metadata"]["annotations"]["mlops.example.com/rollout"])
    assert recorded["outcome"] == "promoted" and recorded["canary_version"] == canary


def _started(setup: Setup, *args: str) -> subprocess.Popen[str]:
    """`mlops rollout` in its own process, running until the test ends it or it ends."""
    environ = {**os.environ, "MLOPS_HOME": str(setup.home)}
    return subprocess.Popen(
        [MLOPS, "rollout", "--url", setup.url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )


def _wait_until_stepping(setup: Setup, rollout: subprocess.Popen[str], percent: int) -> None:
    """Until the running rollout holds the lock and has set ``percent`` (the state says so)."""
    lock = setup.home / "serving" / f"{NAME}.rollout.lock"
    wait_for(
        lambda: (
            rollout.poll() is None
            and lock.exists()
            and f"pid {rollout.pid}" in lock.read_text()
            and _canary_percent(setup) == percent
        ),
        timeout_s=60,
    )


def _canary_percent(setup: Setup) -> int | None:
    from serving import local_controller

    isvc = local_controller.read_state(NAME, setup.home)["inferenceService"]
    return isvc["spec"]["predictor"].get("canaryTrafficPercent")  # type: ignore[no-any-return]


def test_a_second_rollout_is_refused_and_a_humans_rollback_stops_the_first(setup: Setup) -> None:
    stable = setup.champion()
    canary = setup.add_version(fit(setup.frame, 0.7), canary=5)  # the rollout's first step: 10
    with Load(setup.url, setup.rows):
        first = _started(setup, "--steps", "10,50,100", "--interval", "30")
        try:
            _wait_until_stepping(setup, first, 10)
            second = mlops(setup.home, "rollout", "--url", setup.url, "--steps", "10,100")
            assert second.returncode == 1, second.stdout + second.stderr
            assert f"another rollout of '{NAME}' is running (pid {first.pid}" in second.stderr
            assert "lock" in second.stderr and "Traceback" not in second.stderr

            rolled_back = mlops(setup.home, "rollback")
            assert rolled_back.returncode == 0, rolled_back.stderr
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 4, out + err
    assert "stopped: stopped by a rollback" in out, out
    # The human's rollback stays: the canary takes nothing, champion is the stable version.
    assert setup.traffic()[canary] == 0 and _canary_percent(setup) == 0
    assert setup.champion() == stable
    tags = registry.version_tags(setup.tracking_uri, NAME, canary)
    assert tags["rollout.outcome"] == "rolled-back" and "mlops rollback" in tags["rollout.reason"]


def test_a_humans_promote_stops_the_rollout_and_the_promote_stays(setup: Setup) -> None:
    canary = setup.add_version(fit(setup.frame, 0.6), canary=5)  # the rollout's first step: 10
    with Load(setup.url, setup.rows):
        rollout = _started(setup, "--steps", "10,50,100", "--interval", "30")
        try:
            _wait_until_stepping(setup, rollout, 10)
            promoted = mlops(setup.home, "promote")
            assert promoted.returncode == 0, promoted.stderr
            out, err = rollout.communicate(timeout=60)
        finally:
            if rollout.poll() is None:
                rollout.kill()
    assert rollout.returncode == 4, out + err
    assert "stopped: stopped by a promote" in out, out
    assert setup.traffic() == {canary: 100} and _canary_percent(setup) is None
    assert setup.champion() == canary
    assert registry.version_tags(setup.tracking_uri, NAME, canary)["rollout.outcome"] == "promoted"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_roll_the_canary_back(setup: Setup, stop: signal.Signals) -> None:
    stable = setup.champion()
    canary = setup.add_version(fit(setup.frame, 0.4), canary=5)  # the rollout's first step: 10
    rollout = _started(setup, "--steps", "10,50,100", "--interval", "60")
    try:
        _wait_until_stepping(setup, rollout, 10)
        rollout.send_signal(stop)
        out, err = rollout.communicate(timeout=60)
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode != 0, out + err
    assert setup.traffic()[canary] == 0 and _canary_percent(setup) == 0, out + err
    assert setup.champion() == stable


def test_a_deploy_after_promote_then_rollback_keeps_the_stable_version_on_the_stable_side(
    setup: Setup,
) -> None:
    stable = setup.champion()
    rolled_back = setup.add_version(fit(setup.frame, 0.3))
    assert mlops(setup.home, "promote").returncode == 0
    assert mlops(setup.home, "rollback").returncode == 0
    new = setup.add_version(fit(setup.frame, 0.2), deployed=False)

    deployed = mlops(setup.home, "deploy", new)

    assert deployed.returncode == 0, deployed.stderr
    assert f"version {new} takes 10% as the canary; version {stable} " in deployed.stdout
    assert setup.traffic() == {new: 10, stable or "": 90}
    assert rolled_back not in setup.traffic() and setup.champion() == stable
    assert mlops(setup.home, "rollback").returncode == 0


def test_deploy_refuses_a_rolled_back_stable_side_unless_allowed(setup: Setup) -> None:
    stable = setup.champion() or ""
    before = setup.traffic()
    registry.tag_version(setup.tracking_uri, NAME, stable, {"rollout.outcome": "rolled-back"})
    new = setup.add_version(fit(setup.frame, 0.25), deployed=False)
    try:
        refused = mlops(setup.home, "deploy", new)
        assert refused.returncode == 1
        assert f"version {stable} (" in refused.stderr and "was rolled back" in refused.stderr
        assert "--allow-rolled-back" in refused.stderr and "nothing changed" in refused.stderr
        assert setup.traffic() == before

        allowed = mlops(setup.home, "deploy", new, "--allow-rolled-back")
        assert allowed.returncode == 0, allowed.stderr
        assert setup.traffic() == {new: 10, stable: 90}
    finally:
        registry.tag_version(setup.tracking_uri, NAME, stable, {"rollout.outcome": "promoted"})
        mlops(setup.home, "rollback")


def test_a_canary_that_stops_predicting_the_minority_class_is_rolled_back(setup: Setup) -> None:
    """A majority-only model on imbalanced traffic (8% malignant), with that traffic's own
    training reference (so input drift stays quiet, as on imbalanced training data)."""
    from sklearn.dummy import DummyClassifier

    stable = setup.champion()
    labels = setup.frame["target"].to_numpy()
    imbalanced = pd.concat([setup.frame[labels == 1][:184], setup.frame[labels == 0][:16]])
    rows = imbalanced.drop(columns=["target"]).to_numpy(dtype=float)
    majority = DummyClassifier(strategy="prior").fit(rows, imbalanced["target"].to_numpy())
    version, uri = publish(setup.home, majority, imbalanced, setup.tmp)  # type: ignore[arg-type]
    run_id = registry.log_training_run(setup.tracking_uri, NAME, {}, {"f1": 0.9}, setup._logged, {})
    registry.register_version(setup.tracking_uri, NAME, run_id, version, uri)
    applied = deploy(setup.home, version, uri, canary=10)
    sync_aliases(setup.tracking_uri, applied, "local", setup.home)
    canary = str(version)
    with Load(setup.url, rows) as load:
        # The class divergence stays near 0.03 (below 0.05): the per-class share sees the
        # minority class vanish once a window has enough canary rows to tell (the 50% one).
        code, out = setup.rollout("--steps", "10,50,100", *FAST, "--min-drift-rows", "50")
    assert code == 3, out
    assert "class_share" in _last_step(setup.home)["failing"], out
    assert "collapsed: 0:" in out, out
    assert load.failed() == 0
    assert setup.traffic()[canary] == 0 and setup.champion() == stable
