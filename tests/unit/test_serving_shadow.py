"""Shadow mirroring: sampled, bounded, counted on the canary, never in the client's way."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import REGISTRY

from serving.model import Revision, RevisionModel
from serving.shadow import ShadowMirror, compare, sample_rate_from_env
from tests.integration.faulty_models import FailingModel, SlowModel
from tests.integration.serving_helpers import NAME, fit, publish


def _loaded(home: Path, tmp: Path, model: object, frame: pd.DataFrame, rev: str) -> RevisionModel:
    version, uri = publish(home, model, frame, tmp)  # type: ignore[arg-type]
    revision = RevisionModel(NAME, Revision(f"{NAME}-predictor-{rev}", uri, str(version)))
    revision.load()
    return revision


def _count(canary: RevisionModel, outcome: str) -> float:
    labels = dict(zip(("model", "revision", "model_version"), canary.labels, strict=True))
    return (
        REGISTRY.get_sample_value("mlops_shadow_requests_total", {**labels, "outcome": outcome})
        or 0.0
    )


@pytest.fixture
def rows_body(breast_cancer: pd.DataFrame) -> dict[str, list[list[float]]]:
    return {"instances": breast_cancer.drop(columns=["target"]).to_numpy()[:5].tolist()}


def test_compare_tells_agreement_disagreement_and_failure(
    mlops_home: Path, tmp_path: Path, breast_cancer: pd.DataFrame, rows_body: dict
) -> None:
    good = fit(breast_cancer, 1.0)
    stable = _loaded(mlops_home, tmp_path, good, breast_cancer, "s1")
    same = _loaded(mlops_home, tmp_path, good, breast_cancer, "c1")
    flipped = breast_cancer.assign(target=1 - breast_cancer["target"])
    wrong = _loaded(mlops_home, tmp_path, fit(flipped, 1.0), breast_cancer, "c2")
    broken = _loaded(mlops_home, tmp_path, FailingModel(good), breast_cancer, "c3")
    assert compare(rows_body, stable, same) == ("agreed", 5, 5)
    outcome, agreed, rows = compare(rows_body, stable, wrong)
    assert (outcome, rows) == ("disagreed", 5) and agreed < 5
    assert compare(rows_body, stable, broken) == ("failed", 0, 0)


def test_a_busy_canary_makes_the_mirror_drop_instead_of_waiting(
    mlops_home: Path, tmp_path: Path, breast_cancer: pd.DataFrame, rows_body: dict
) -> None:
    good = fit(breast_cancer, 1.0)
    stable = _loaded(mlops_home, tmp_path, good, breast_cancer, "s2")
    slow = _loaded(mlops_home, tmp_path, SlowModel(good, 0.5), breast_cancer, "c4")
    mirror = ShadowMirror(sample_rate=1.0, queue_size=1)
    mirror.start()
    for _ in range(6):  # one being compared (0.5 s), one queued, the rest dropped at once
        mirror.offer(rows_body, stable, slow)
    assert _count(slow, "dropped") >= 4
    assert mirror.drain(10)
    assert _count(slow, "agreed") == 6 - _count(slow, "dropped")
    mirror.stop()


def test_the_sample_rate_comes_from_the_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOPS_SHADOW_SAMPLE_RATE", "0.5")
    assert sample_rate_from_env() == 0.5
    monkeypatch.setenv("MLOPS_SHADOW_SAMPLE_RATE", "2")
    with pytest.raises(ValueError, match="MLOPS_SHADOW_SAMPLE_RATE='2'"):
        sample_rate_from_env()
