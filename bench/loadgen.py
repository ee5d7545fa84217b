"""Drive wrk (pinned to the client core) with bench/wrk.lua and parse its JSON summary."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("wrk.lua")
MARKER = "BENCH_JSON "


@dataclass(slots=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and error counts."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx responses
    non_2xx: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the raw JSON results file."""
        return asdict(self)


def ensure_wrk() -> str:
    """Path to wrk; install Debian's package when it is missing (we run as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get update && apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still missing after apt-get install")
    return found


def parse_output(stdout: str) -> WrkResult:
    """Extract the BENCH_JSON line printed by wrk.lua's done()."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            break
    else:
        raise RuntimeError(f"wrk printed no {MARKER.strip()} line:\n{stdout}")
    seconds = raw["duration_us"] / 1e6
    socket_errors = raw["err_connect"] + raw["err_read"] + raw["err_write"] + raw["err_timeout"]
    return WrkResult(
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=socket_errors + raw["err_status"],
        non_2xx=raw["err_status"],
    )


def run_wrk(
    url: str,
    *,
    method: str,
    body_file: Path | None,
    token_file: Path | None,
    connections: int,
    duration: float,
    cpus: str,
    threads: int = 1,
    timeout_s: int = 10,
    headers_file: Path | None = None,
) -> WrkResult:
    """Run wrk once against url and return its parsed summary (``headers_file``: more headers,
    one ``Name: value`` per line)."""
    wrk = ensure_wrk()
    argv = [
        "taskset", "-c", cpus,
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s", str(LUA),
        url,
        "--",
        method,
        str(body_file) if body_file else "-",
        str(token_file) if token_file else "-",
        *([str(headers_file)] if headers_file else []),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_output(done.stdout)
