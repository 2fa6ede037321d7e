"""Drive a server with `wrk` (an independent load generator in C): POST one body, read figures.

`wrk` comes from Debian's package; ``ensure_wrk`` installs it with apt-get when missing and
this runs as root, else says the command. The body travels through a Lua script, whose
``done`` callback prints the figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

_SCRIPT = """
local file = io.open({body}, "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    """The path of ``wrk``, installed with apt-get first when missing and running as root.

    Raises:
        SystemExit: When it is missing and cannot be installed from here.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed: run `sudo apt-get install -y wrk`, then again")
    print("installing wrk (apt-get install -y wrk)...", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, **quiet).returncode:
        subprocess.run(["apt-get", "update"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, **quiet)
    return shutil.which("wrk") or "wrk"


def write_script(body_file: Path) -> Path:
    """A Lua script POSTing ``body_file``'s bytes as JSON; next to the body file."""
    script = body_file.with_suffix(".lua")
    script.write_text(_SCRIPT.format(body=json.dumps(str(body_file))))
    return script


def run_wrk(
    wrk: str, url: str, body_file: Path, threads: int, connections: int, duration_s: float
) -> dict[str, Any]:
    """Run ``wrk`` against ``url`` and return throughput, p50/p99 (ms) and failed requests."""
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s"]
    command += ["--latency", "-s", str(write_script(body_file)), url]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    figures = json.loads(line)
    return {
        "requests": figures["requests"],
        "errors": figures["errors"] + figures["non_2xx"],
        "throughput": figures["requests"] / (figures["duration_us"] / 1e6),
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
    }
