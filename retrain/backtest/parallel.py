"""Policies replayed side by side, one process each: a backtest's policies share nothing but the rows.

Each policy already replays in its own SQLite database and artifact store
(:mod:`retrain.backtest.run`), so ``jobs`` of them can run at once in forked
processes, each returning its part of the report. The parent draws the progress
bar from their messages. Ctrl-C or SIGTERM (in the parent, or sent to the whole
process group) stops every running replay as it stops one: each child ends its
replay, reports what it replayed (``partial``), and policies not started yet are
left out. A child that fails raises its error again in the parent. A child whose
parent died without stopping it (killed) stops at its next progress report. Children
start with SIGINT and SIGTERM blocked until their own handler is in place, so a signal
at that moment is handled as any other, not by the parent's handler copied by fork.

Results do not depend on ``jobs``: a replay reads only its own database and the
rows, and everything random is seeded.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from retrain.core.clock import monotonic

__all__ = ["default_jobs", "run_parallel", "stop_once"]

# How long the parent waits for the children to report after it asked them to stop.
_STOP_GRACE_S = 300.0


def default_jobs(policies: int) -> int:
    """One process per CPU this process may use, at most one per policy."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(policies, cpus))


def stop_once(exc: type[BaseException]) -> None:
    """Make the first SIGINT or SIGTERM raise ``exc`` in this process, and the ones after it do nothing,
    so that the report of what was replayed is written in full."""

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise exc()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child(q, work: Callable[..., dict], label: str, args: tuple, stop_exc: type[BaseException]) -> None:
    # Forked with SIGINT and SIGTERM blocked (see run_parallel): one that came meanwhile is delivered
    # here, to this process's own handler, not to the parent's handler copied by fork.
    stop_once(stop_exc)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    parent = os.getppid()

    def progress(lbl, fraction, now, trainings) -> None:
        if os.getppid() != parent:
            # The parent died without stopping us (SIGKILL, an unhandled SIGTERM): nobody reads the
            # queue any more; stop as on Ctrl-C and do not wait at exit for messages nobody reads.
            q.cancel_join_thread()
            raise stop_exc()
        q.put(("progress", lbl, fraction, now, trainings))

    try:
        result = work(*args, progress)
        if os.getppid() != parent:
            q.cancel_join_thread()
        q.put(("done", label, result))
    except BaseException as exc:  # noqa: BLE001 - the parent raises it again
        try:
            q.put(("error", label, exc, traceback.format_exc()))
        except Exception:  # an exception that does not pickle: its text, then
            q.put(("error", label, RuntimeError(f"{type(exc).__name__}: {exc}"), traceback.format_exc()))


def run_parallel(labels: Sequence[str], work: Callable[..., dict], args: dict[str, tuple], jobs: int, *,
                 progress: Callable[[str, float, Any, int], None] | None = None,
                 stop_exc: type[BaseException] = KeyboardInterrupt) -> tuple[dict[str, dict], bool]:
    """Run ``work(*args[label], progress)`` for each label, ``jobs`` at a time in forked processes.

    Returns ``(results by label, interrupted)``. Labels are started in the order given (put the
    longest first). An interruption (KeyboardInterrupt in the parent, e.g. raised by ``progress``,
    Ctrl-C or SIGTERM) asks the running children to stop and collects what they replayed.
    """
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    pending = list(labels)
    running: dict[str, Any] = {}
    results: dict[str, dict] = {}
    failure: tuple[str, BaseException, str] | None = None
    stopping = False
    deadline: float | None = None

    def stop_children() -> None:
        nonlocal stopping, deadline
        stopping = True
        deadline = monotonic() + _STOP_GRACE_S
        pending.clear()  # not started: left out of the report
        for p in running.values():
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    while pending or running:
        try:
            while not stopping and pending and len(running) < jobs:
                label = pending.pop(0)
                sys.stdout.flush()
                sys.stderr.flush()
                p = ctx.Process(target=_child, args=(q, work, label, args[label], stop_exc), daemon=True,
                                name=f"retrain-backtest {label}")
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                try:
                    p.start()
                    running[label] = p
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                msg = q.get(timeout=0.25)
            except queue.Empty:
                for label, p in list(running.items()):
                    if not p.is_alive() and p.exitcode is not None:
                        # Gone without a word (killed, out of memory): its messages would have come first.
                        try:
                            msg = q.get(timeout=1.0)
                        except queue.Empty:
                            running.pop(label)
                            if failure is None and not stopping:
                                failure = (label, RuntimeError(f"the replay of {label} died (exit code "
                                                               f"{p.exitcode})"), "")
                                stop_children()
                            msg = None
                        break
                else:
                    msg = None
                if msg is None:
                    if stopping and deadline is not None and monotonic() > deadline:
                        for p in running.values():
                            p.kill()
                        running.clear()
                    continue
            kind, label = msg[0], msg[1]
            if kind == "progress":
                if progress is not None and not stopping:
                    progress(*msg[1:])
                continue
            p = running.pop(label, None)
            if p is not None:
                p.join(timeout=30)
            if kind == "done":
                results[label] = msg[2]
            elif isinstance(msg[2], KeyboardInterrupt):
                # Stopped by a signal outside its replay (while reading its report back): nothing to
                # report from it; the others are asked to stop as on Ctrl-C.
                if not stopping:
                    stop_children()
            elif failure is None:
                failure = (label, msg[2], msg[3])
                stop_children()
        except KeyboardInterrupt:
            if not stopping:
                stop_children()
    q.close()
    if failure is not None:
        label, exc, text = failure
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        if text:
            exc.add_note(f"in the replay of {label}, a separate process:\n{text}")
        raise exc
    return results, stopping
