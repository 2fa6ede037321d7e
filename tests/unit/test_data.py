"""An empty data file is a user mistake, refused before the pipeline starts (issue 8 item 13)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.data import check_source


def test_an_empty_csv_is_refused_by_the_source_check(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.touch()
    with pytest.raises(ValueError, match=f"source '{empty}' is empty: it needs a header row"):
        check_source(str(empty))


def test_run_on_an_empty_csv_is_one_error_line_and_writes_nothing(
    tmp_path: Path, mlops_home: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.touch()
    result = CliRunner().invoke(main, ["run", "--source", str(empty)])
    assert result.exit_code == 1
    expected = f"error: source '{empty}' is empty: it needs a header row and data rows\n"
    assert result.output == expected
    assert not mlops_home.exists()
