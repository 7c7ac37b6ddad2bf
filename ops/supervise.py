"""One supervisor for the project's child processes: start, readiness, log file, stop, exit code.

Owns :class:`Supervised` (one child: a Faust worker, a subscriber, the bench's naive app) and
:func:`stop_all`. The demo (:mod:`ops.demo`), the bench (:mod:`bench.worker.harness`) and the
Kafka-tier test harnesses (``tests/support/worker_harness.py``,
``tests/support/subscriber_harness.py``) start and stop their children through it, so they agree
on how:

* **Start**: the child leads its own session (``start_new_session``): a terminal's Ctrl-C
  reaches only the parent, which stops its children in order, and a signal to the session's
  group reaches whatever helpers the child started. Output goes to one log file per child; each
  start appends a banner line, so a restarted child's log keeps every run and
  :meth:`Supervised.this_run_log` reads the last one.
* **Readiness**: the child is up when each of its ``ready_paths`` answers 200 and, if given,
  its log shows ``ready_line`` in this run; a child that exits first, or a deadline that
  passes, raises :attr:`Supervised.error` with the tail of its log.
* **Stop**: SIGTERM to the group, a grace period, then SIGKILL to the group (and always a last
  SIGKILL to the group, so no helper outlives its leader). :meth:`Supervised.kill` is the
  crash: SIGKILL, no shutdown. Every exit code is kept in :attr:`Supervised.exit_codes`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
BANNER = "===== start "


@dataclass
class Supervised:
    """One child process and its log file (see the module doc)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    url: str
    """Base URL of the child's web server (``http://host:port``)."""
    cwd: Path | None = None
    error: type[Exception] = RuntimeError
    """What a failed start or wait raises (tests raise their own AssertionError kinds)."""
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> Supervised:
        if self.alive():
            raise self.error(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as handle:
            handle.write(f"\n{BANNER}{self.name} at {time.strftime('%X')} =====\n".encode())
            handle.flush()
            self.proc = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d, log %s)", self.name, self.proc.pid, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Until the child exits on its own (``subprocess.TimeoutExpired`` after
        ``timeout_s``); its exit code, also kept in :attr:`exit_codes`."""
        assert self.proc is not None, f"{self.name} was never started"
        code = self.proc.wait(timeout=timeout_s)
        self.exit_codes.append(code)
        return code

    # --- the log ------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def this_run_log(self) -> str:
        text = self.log_text()
        return text[text.rfind(BANNER) :]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def fail(self, message: str) -> Exception:
        return self.error(f"{message}\n--- tail of {self.log_path} ---\n{self.log_tail()}")

    # --- readiness ----------------------------------------------------------------------------

    def get_json(self, path: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        """``GET url + path``: status and JSON body (the text when an error body is not JSON)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def _answers(self, path: str) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return self.get_json(path, 1.0)[0] == 200
        return False

    def wait_ready(
        self,
        timeout_s: float = START_TIMEOUT_S,
        *,
        ready_paths: Iterable[str] = ("/health",),
        ready_line: str | None = None,
        poll_s: float = 0.2,
    ) -> float:
        """Until every ``ready_paths`` answered 200 (in order) and ``ready_line`` is in this
        run's log; seconds since the start. Raises :attr:`error` with the log's tail if the
        child exits first or ``timeout_s`` passes."""
        deadline = self.started_at + timeout_s
        pending = list(ready_paths)
        while True:
            if not self.alive():
                raise self.fail(f"{self.name} exited with code {self.returncode} during start-up")
            while pending and self._answers(pending[0]):
                pending.pop(0)
            if not pending and (ready_line is None or ready_line in self.this_run_log()):
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise self.fail(f"{self.name} not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    # --- stopping -----------------------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        """``sig`` to the child's session group (the child and any helper it started)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush (a crash)."""
        if self.alive():
            assert self.proc is not None
            self.signal_group(signal.SIGKILL)
            self.exit_codes.append(self.proc.wait(timeout=STOP_TIMEOUT_S))

    def terminate(self) -> None:
        """SIGTERM to the group, without waiting (see :func:`stop_all`)."""
        if self.alive():
            self.signal_group(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for a terminated child until ``deadline`` (monotonic), then SIGKILL; record the
        exit code and make sure nothing of its group is left."""
        proc = self.proc
        if proc is None:
            return
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            log.info("%s stopped (exit code %s)", self.name, code)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM; killing it", self.name)
            self.signal_group(signal.SIGKILL)
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        self.exit_codes.append(code)
        self.signal_group(signal.SIGKILL)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, up to ``timeout_s`` of grace, then SIGKILL. Safe to call more than once."""
        stop_all([self], timeout_s)


def stop_all(children: Iterable[Supervised], grace_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every running child at once, then wait for each within one shared grace period
    and SIGKILL what is left."""
    running = [c for c in children if c.alive()]
    for child in running:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in running:
        child.finish(deadline)


__all__ = ["START_TIMEOUT_S", "STOP_TIMEOUT_S", "Supervised", "stop_all"]
