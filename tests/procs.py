"""Real processes for integration tests: celery workers and beat, with logs kept for failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery", "-A", "workers.app"]


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()
        return self.p.returncode


def retrain_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update({k: str(v) for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_worker(name: str, queues: str, env: dict[str, str], log_dir: Path, pool: str = "solo",
                 concurrency: int = 1) -> Proc:
    return Proc(name, CELERY + ["worker", "-Q", queues, "-n", f"{name}@%h", "-P", pool, "-c", str(concurrency),
                                "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env, log_dir)


def start_beat(env: dict[str, str], log_dir: Path) -> Proc:
    return Proc("beat", CELERY + ["beat", "--loglevel=INFO", f"--schedule={log_dir / 'beat-schedule'}"], env, log_dir)


def wait_for(what: str, check: Callable[[], object], timeout: float, procs: list[Proc] = (), every: float = 0.25):
    """Poll ``check`` until it returns something truthy; fail with the processes' logs on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited ({p.p.returncode}) while waiting for {what}:\n{p.log()[-4000:]}")
        time.sleep(every)
    logs = "\n".join(f"--- {p.name} ---\n{p.log()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})\n{logs}")


def until(check: Callable[[], object], timeout: float = 5.0, every: float = 0.01) -> bool:
    """Poll ``check`` until it is truthy or ``timeout`` passes; its last answer, as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())
