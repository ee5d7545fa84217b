"""``authmount server --workers N``: the supervisor process and what its workers need from it.

The supervisor serves nothing itself. It starts N worker processes (``python -m server.cli``
with the same arguments), which listen on the same port (``SO_REUSEPORT``: the kernel
spreads new connections over them) and share the storage:

- SQLite: the supervisor takes the file's owner lock (``<path>.lock``) first and every
  worker inherits it, so the workers share the file while any other server or
  ``authmount operator`` command is still refused (``server.storage.sqlite_shared``);
- PostgreSQL: the workers are nodes of one database, as separate servers would be.

Worker 0 starts alone and the others once it is ready (it answered the first-start work:
storage key file, keyring, root token; its banner is the server's). A worker reports ready
by writing to a pipe (``AUTHMOUNT_WORKER_READY_FD``) once it listens.

A worker that exits while the server is not stopping (killed, crashed, or stopped on its
own) is replaced: at once the first time, then, while replacements keep dying within
``STABLE_AFTER`` seconds of their start, after 0.5 s, 1 s, 2 s ... up to ``MAX_BACKOFF``.
The other workers keep serving meanwhile: the connections the dead worker had accepted are
lost, new ones go to the live workers. Only a worker that fails during the *first* start
stops the whole server (a bad configuration, a busy port), with that worker's exit code.

Per-IP login rate limits: the supervisor creates the bucket table every worker spends
from (``server.http.ratelimit_shared``) and passes its descriptor on.

Metrics: every worker gets the same ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multi-process mode, ``server.telemetry``), the operator's or a temporary directory that
the supervisor removes when it stops; a dead worker's live gauges are dropped when it is
reaped.

SIGTERM/SIGINT are passed to every worker (each finishes its requests) and the supervisor
exits once all have; SIGHUP is passed on (each worker reloads). Workers ask the kernel for
SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``, Linux), so a killed supervisor
does not leave workers holding the port and the storage lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import structlog

__all__ = [
    "Supervisor",
    "WORKER_ENV",
    "READY_ENV",
    "METRICS_DIR_ENV",
    "MONITOR_DIR_ENV",
    "SUPERVISOR_ENV",
    "REPLACEMENT_ENV",
    "report_ready",
    "follow_supervisor",
    "STABLE_AFTER",
    "MAX_BACKOFF",
]

#: The worker's index (0 .. N-1); set by the supervisor, it makes ``server.cli`` a worker.
WORKER_ENV = "AUTHMOUNT_WORKER_INDEX"
#: prometheus-client's multi-process directory, shared by the workers.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Where the workers' log monitors listen for each other's lines (``server.diagnostics.LogRelay``).
MONITOR_DIR_ENV = "AUTHMOUNT_MONITOR_DIR"
#: The write end of the pipe on which a worker reports that it listens.
READY_ENV = "AUTHMOUNT_WORKER_READY_FD"
#: The supervisor's pid (a worker whose parent is already gone stops at once).
SUPERVISOR_ENV = "AUTHMOUNT_SUPERVISOR_PID"
#: Set for a replacement worker: it prints no banner.
REPLACEMENT_ENV = "AUTHMOUNT_WORKER_REPLACEMENT"

#: A replacement that lived this many seconds resets its slot's backoff.
STABLE_AFTER = 10.0
#: The longest wait before a replacement (while replacements keep dying at once).
MAX_BACKOFF = 30.0
#: The first backoff step (doubled per quick death).
FIRST_BACKOFF = 0.5

log = structlog.get_logger("authmount.supervisor")


@dataclass(slots=True)
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of the ready pipe while the worker starts
    ready: bool = False
    started_at: float = 0.0
    quick_deaths: int = 0  # replacements in a row that died before STABLE_AFTER
    restart_at: float | None = None  # a replacement is due at this monotonic time
    generation: int = 0  # how many processes this slot has had


@dataclass
class Supervisor:
    """Run ``count`` workers of ``argv`` (the ``authmount`` arguments) until stopped."""

    count: int
    argv: list[str]
    sqlite_path: str | None = None  # SQLite storage: the file whose owner lock we hold
    slots: list[_Slot] = field(default_factory=list)
    stopping: int = 0  # the signal that stops the server (0: running)
    first_error: int = 0
    _lock_fd: int | None = None
    _metrics_dir: str = ""
    _monitor_dir: str = ""
    _table_fd: int | None = None  # the workers' shared rate-limit buckets
    _hangups: int = 0
    _forwarded: set[int] = field(default_factory=set)  # pids already sent the stop signal

    def run(self) -> int:
        """Start the workers, keep them running, stop them; the process exit code."""
        if self.sqlite_path is not None:
            from server.storage.sqlite_shared import owner_lock

            try:
                self._lock_fd = owner_lock(self.sqlite_path)
            except (RuntimeError, OSError) as exc:
                print(f"Error starting server: storage: {exc}", file=sys.stderr)
                return 1
        from server.http.ratelimit_shared import create_table

        try:
            self._table_fd = create_table()
        except OSError as exc:
            print(f"Error starting server: rate-limit table: {exc}", file=sys.stderr)
            return 1
        self._metrics_dir = os.environ.get(METRICS_DIR_ENV) or ""
        made_dir = not self._metrics_dir
        if made_dir:
            self._metrics_dir = tempfile.mkdtemp(prefix="authmount-metrics-")
        self._monitor_dir = tempfile.mkdtemp(prefix="authmount-monitors-")  # 0700
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        self.slots = [_Slot(i) for i in range(self.count)]
        try:
            self._spawn(self.slots[0])
            first_wave = False  # the others start once worker 0 is ready
            while True:
                if not first_wave and self.slots[0].ready and not self.stopping:
                    first_wave = True
                    for slot in self.slots[1:]:
                        self._spawn(slot)
                self._forward_stop()
                self._forward_hangups()
                self._wait_ready(timeout=self._next_timeout())
                self._reap()
                self._forward_stop()
                if self.stopping and not any(self._alive(s) for s in self.slots):
                    break
                if not self.stopping:
                    self._restart_due()
        finally:
            for slot in self.slots:
                if slot.ready_fd is not None:
                    os.close(slot.ready_fd)
                    slot.ready_fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            if self._table_fd is not None:
                os.close(self._table_fd)
            if made_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            shutil.rmtree(self._monitor_dir, ignore_errors=True)
        return self.first_error

    # -- signals -------------------------------------------------------------------------
    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = signum  # the main loop passes it on (not from the handler)

    def _forward_stop(self) -> None:
        if not self.stopping:
            return
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and self._alive(slot) and proc.pid not in self._forwarded:
                self._forwarded.add(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, self.stopping)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self._hangups += 1

    def _forward_hangups(self) -> None:
        while self._hangups:
            self._hangups -= 1
            for slot in self.slots:
                if self._alive(slot) and slot.ready:
                    assert slot.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.send_signal(signal.SIGHUP)  # each worker reloads itself

    # -- workers -------------------------------------------------------------------------
    @staticmethod
    def _alive(slot: _Slot) -> bool:
        return slot.proc is not None and slot.proc.returncode is None

    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[WORKER_ENV] = str(slot.index)
        env[READY_ENV] = str(write_fd)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[METRICS_DIR_ENV] = self._metrics_dir
        env[MONITOR_DIR_ENV] = self._monitor_dir
        env.pop(REPLACEMENT_ENV, None)
        if slot.generation:
            env[REPLACEMENT_ENV] = "1"
        fds = [write_fd]
        if self._table_fd is not None:
            from server.http.ratelimit_shared import TABLE_FD_ENV

            env[TABLE_FD_ENV] = str(self._table_fd)
            fds.append(self._table_fd)
        if self._lock_fd is not None:
            from server.storage.sqlite_shared import LOCK_FD_ENV

            env[LOCK_FD_ENV] = str(self._lock_fd)
            fds.append(self._lock_fd)
        try:
            slot.proc = subprocess.Popen([sys.executable, "-m", "server.cli", *self.argv], env=env, pass_fds=fds)
        finally:
            os.close(write_fd)
        slot.ready_fd, slot.ready = read_fd, False
        slot.started_at, slot.restart_at = time.monotonic(), None
        slot.generation += 1
        if slot.generation > 1:
            log.info("worker_replaced", worker=slot.index, pid=slot.proc.pid, replacement=slot.generation - 1)

    def _wait_ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a ready report (or a start failure: EOF)."""
        fds = [s.ready_fd for s in self.slots if s.ready_fd is not None]
        if not fds:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(fds, [], [], timeout)
        for slot in self.slots:
            if slot.ready_fd is not None and slot.ready_fd in readable:
                data = os.read(slot.ready_fd, 16)
                os.close(slot.ready_fd)
                slot.ready_fd = None
                slot.ready = bool(data)  # EOF without a byte: the worker died starting

    def _next_timeout(self) -> float:
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        if not due or self.stopping:
            return 0.1
        return max(0.0, min(0.1, min(due) - time.monotonic()))

    def _reap(self) -> None:
        """Collect exited workers: one failing at the first start stops the server; later,
        a dead worker gets a replacement (``_restart_due``)."""
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.returncode is not None:
                continue
            code = proc.poll()
            if code is None:
                continue
            self._drop_live_gauges(proc.pid)
            if slot.ready_fd is not None:  # the writer is gone: a byte or EOF, no blocking
                slot.ready = bool(os.read(slot.ready_fd, 16))
                os.close(slot.ready_fd)
                slot.ready_fd = None
            if code < 0 and -code == self.stopping:
                code = 0  # a worker still starting when asked to stop dies of that very signal
            if self.stopping:
                if code != 0 and not self.first_error:
                    self.first_error = code if code > 0 else 1
                continue
            lived = time.monotonic() - slot.started_at
            if slot.generation == 1 and not slot.ready:
                # The first start failed (bad settings, busy port, storage in use): stop all.
                self.first_error = code if code > 0 else 1
                log.error("worker_failed_to_start", worker=slot.index, pid=proc.pid, exit_code=code)
                self.stopping = signal.SIGTERM
                continue
            slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_AFTER else 0
            delay = 0.0 if slot.quick_deaths <= 1 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.quick_deaths - 2))
            slot.restart_at = time.monotonic() + delay
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            log.warning(
                "worker_exited", worker=slot.index, pid=proc.pid, how=how, uptime_s=round(lived, 1),
                replacement_in_s=round(delay, 1),
            )

    def _drop_live_gauges(self, pid: int) -> None:
        """A dead worker's live gauges leave the merged metrics (a clean exit dropped them
        itself; a killed worker could not)."""
        if not self._metrics_dir:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self._alive(slot):
                self._spawn(slot)


def report_ready() -> None:
    """Worker: tell the supervisor this worker listens (no-op outside a supervisor)."""
    raw = os.environ.pop(READY_ENV, None)
    if raw is None or not raw.isdigit():
        return
    fd = int(raw)
    try:
        os.write(fd, b"1")
    except OSError:
        pass  # the supervisor is gone: PR_SET_PDEATHSIG stops us
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def follow_supervisor() -> None:
    """Worker: get SIGTERM when the supervisor dies (Linux ``PR_SET_PDEATHSIG``); if it is
    already gone, stop now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    expected = os.environ.get(SUPERVISOR_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)
