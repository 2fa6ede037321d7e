"""Batch scoring: `mlops score` on N rows as a whole process, against the in-process floor.

    .venv/bin/python benchmarks/batch_scoring.py               # 1,000,000 rows
    .venv/bin/python benchmarks/batch_scoring.py --rows 200000 --input-format parquet

It trains a champion with `mlops run` in a fresh state directory, writes N realistic rows
(breast cancer cases resampled with 5% noise per feature, plus a `case_id`), runs
`mlops score INPUT --output OUT --id-column case_id` as a subprocess, and prints:
- rows/s of the whole command (kfp.local, three step processes, the CSV parse, the Parquet copy);
- the peak RSS of the whole process tree (the sum of every live process's RSS, sampled every
  50 ms from /proc) and the highest peak of any one process (its VmHWM, which the kernel keeps);
- the floor: `model.predict` (and `predict_proba`) on the same rows in this process.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 100_000


def _mlops(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlops.cli", *args]


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """N cases like the breast cancer data (resampled, 5% noise), a chunk at a time."""
    from mlops.data import load_table

    base = load_table("sklearn:breast_cancer").drop(columns=["target"])
    scale = base.std().to_numpy() * 0.05
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        picked = base.to_numpy()[rng.integers(0, len(base), n)]
        noisy = np.clip(picked + rng.normal(0, 1, picked.shape) * scale, 0, None)
        frame = pd.DataFrame(noisy.round(6), columns=base.columns)
        frame.insert(0, "case_id", np.arange(start, start + n) + 10_000_000)
        if path.suffix == ".csv":
            frame.to_csv(path, mode="a", header=start == 0, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if start == 0:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    if path.suffix != ".csv":
        writer.close()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(argv: list[str]) -> str:
    """A step process by its component's name, else the command."""
    if "--function_to_execute" in argv:
        return "step " + argv[argv.index("--function_to_execute") + 1]
    return " ".join(argv)[:80]


class TreeMemory(threading.Thread):
    """Samples a process tree: peak of the summed RSS, and each process's VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_tree_kb, self.hwm_kb = pid, 0, {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            total = 0
            for pid in pids:
                total += _status_kb(pid, "VmRSS")
                hwm = _status_kb(pid, "VmHWM")
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if hwm > self.hwm_kb.get(pid, (0, ""))[0]:
                    self.hwm_kb[pid] = hwm, _name(cmd.decode(errors="replace").split())
            self.peak_tree_kb = max(self.peak_tree_kb, total)
            time.sleep(0.05)


def floor(home: Path, data: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds for model.predict and model.predict_proba on the rows, in this process."""
    os.environ.update(env)
    from mlops.scoring import load_model

    storage = f"{home / 'store' / 'breast-cancer' / '1'}"
    with tempfile.TemporaryDirectory() as tmp:
        model, metadata, _ = load_model(storage, Path(tmp))
    frame = pd.read_csv(data) if data.suffix == ".csv" else pd.read_parquet(data)
    features = frame[metadata["feature_names"]].to_numpy(dtype=float)
    del frame
    start = time.perf_counter()
    model.predict(features)
    predict = time.perf_counter() - start
    start = time.perf_counter()
    model.predict_proba(features)
    return predict, time.perf_counter() - start, len(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--input-format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--output-format", choices=["csv", "parquet"], default="parquet")
    parser.add_argument("--workdir", type=Path, help="Kept afterwards (default: a temp dir).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="batch-scoring-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        home = work / ".mlops"
        env = {
            **os.environ,
            "MLOPS_HOME": str(home),
            "PYTHONPATH": str(ROOT),
        }
        for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        # A --workdir from an earlier run keeps its champion and its input (same --rows).
        if not (home / "store").is_dir():
            subprocess.run(_mlops("run"), env=env, cwd=work, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = work / f"input-{args.rows}.{args.input_format}"
        if not data.exists():
            start = time.perf_counter()
            write_rows(data, args.rows)
            print(f"input written in {time.perf_counter() - start:.1f} s")
        print(f"input: {args.rows:,} rows, {data.stat().st_size / 1e6:.0f} MB {args.input_format}")

        output = work / f"predictions.{args.output_format}"
        output.unlink(missing_ok=True)
        command = _mlops("score", str(data), "--output", str(output), "--id-column", "case_id")
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        memory = TreeMemory(process.pid)
        memory.start()
        out, _ = process.communicate()
        elapsed = time.perf_counter() - start
        memory.done.set()
        memory.join()
        if process.returncode != 0:
            sys.exit(f"mlops score failed:\n{out}")
        print(f"mlops score: {elapsed:.1f} s, {args.rows / elapsed:,.0f} rows/s "
              f"({output.stat().st_size / 1e6:.0f} MB {args.output_format})")
        print(f"peak RSS, whole process tree (sum, sampled every 50 ms): "
              f"{memory.peak_tree_kb / 1024:.0f} MiB")
        print("peak RSS per process (VmHWM):")
        for hwm, cmd in sorted(memory.hwm_kb.values(), reverse=True)[:4]:
            print(f"  {hwm / 1024:6.0f} MiB  {cmd}")
        predict, proba, rows = floor(home, data, env)
        print(f"floor, in-process on the same {rows:,} rows: model.predict {predict:.2f} s "
              f"({rows / predict:,.0f} rows/s), predict_proba {proba:.2f} s "
              f"({rows / proba:,.0f} rows/s)")
        print(f"mlops score / predict floor: {elapsed / predict:.0f}x the time")


if __name__ == "__main__":
    main()
