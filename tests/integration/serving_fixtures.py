"""The `canary_server` fixture (a pytest plugin: `pytest_plugins` in the tests that use it)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from tests.integration.serving_helpers import Served, deploy_champion_and_canary, start_server


@pytest.fixture(scope="module")
def canary_server(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame
) -> Iterator[Served]:
    """Versions 1 and 2 deployed as `mlops run` twice would (2 is a 10% canary), served."""
    home = tmp_path_factory.mktemp("serving") / ".mlops"
    tmp = tmp_path_factory.mktemp("models")
    models = deploy_champion_and_canary(home, breast_cancer, tmp)
    server = start_server(home, "--max-body-bytes", str(1024 * 1024))
    rows = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)
    try:
        yield Served(server.url, home, server.log, models, rows)
    finally:
        server.stop()
