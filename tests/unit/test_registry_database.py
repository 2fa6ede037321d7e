"""A new local MLflow database is created by one process at a time, the others wait for it.

``mlops run`` creates it in the background while the first steps run; the step that first uses
MLflow must not migrate the same new file at the same time (a lock file beside it).
"""

import fcntl
import sqlite3
import threading
from pathlib import Path

import mlflow  # noqa: F401  (imported now: the thread below must wait for the lock alone)

from mlops import registry


def test_a_new_database_waits_for_the_lock_holder_then_has_its_tables(tmp_path: Path) -> None:
    database = tmp_path / "state" / "mlflow.db"
    database.parent.mkdir()
    uri = f"sqlite:///{database}"
    with open(database.with_name("mlflow.db.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is creating the database
        waiter = threading.Thread(target=registry.prepare_local_database, args=(uri,))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive(), "it used the database while another process was creating it"
        assert not database.exists()
    waiter.join()
    tables = {row[0] for row in sqlite3.connect(database).execute("SELECT name FROM sqlite_master")}
    assert {"experiments", "registered_models", "alembic_version"} <= tables
    assert registry.version_of_alias(uri, "breast-cancer", registry.CHAMPION) is None


def test_a_tracking_server_is_left_alone() -> None:
    registry.prepare_local_database("http://127.0.0.1:9")  # no lock file, no connection
