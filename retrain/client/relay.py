"""The client's relay process: the broker I/O of the trading app, out of the trading app's process.

In relay mode (``RetrainClient(url, mode="relay")``) the report call that finds a batch
due packs it on its own thread and hands it to :class:`ProcessRelay`, which writes it
to a pipe and returns: a non-blocking write, no thread to wake. A child process
(``python -m retrain.client.relay BROKER_URL``) reads the pipe and sends each batch
with the client's own machinery: a :class:`~retrain.client.RetrainClient` with the
kombu sender, replay after a Redis restart, bounded waiting with backoff while the
broker is down, and drops counted and reported to the server.

Why a process: a model that releases and retakes the GIL often (scikit-learn's input
checks do, thousands of times a second) starves any other thread of the process,
which then burns milliseconds of CPU each time it wakes and waits for the GIL. The
relay has a GIL of its own.

The pipe carries frames: a 4-byte big-endian length of the rest, a 4-byte length of the
header, the header (one JSON object), then the body. An ingest batch is a header
``{"task", "queue", "priority", "rows", "batch_id", "model", "client_dropped"}`` and,
as the body, the Celery message body the parent encoded (:func:`~retrain.client.encode_ingest`):
the child publishes it as it is, never decoding it. Other messages are a header
``{"task", "queue", "priority", "payload"}``; ``{"flush": token}`` asks for everything
to reach the broker. The child answers on its stdout, a line
each: ``ack ROWS`` when a batch reached the broker, ``dropped ROWS`` when it gave one
up (already counted and reported by the child), ``flushed TOKEN 1|0``. Rows written
but never acknowledged when the child dies are counted as lost by the parent
(``on_lost``) and reported with its next batch. When the parent goes away, the child
reads end-of-file, sends what it holds and exits.

The relay also keeps the client's clock, so that no thread of the app has to wake for it:
:meth:`ProcessRelay.due_limit` maps 8 bytes shared with the child (an unlinked file,
passed by descriptor), the threshold the client's report calls compare the buffer's
length with; the child sets it to 0 every ``interval_s``, and the next report call packs
what waits. (A thread of the app's own, waking to do that, would wait for the GIL beside a
model that keeps releasing and retaking it, and burn milliseconds of CPU at each wake.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from retrain.client import EncodedIngest, encode_ingest
from retrain.core.clock import monotonic
from retrain.core.errors import RelayBusyError
from retrain.tasks import INGEST

__all__ = ["ProcessRelay", "RelayStats", "RelayBusy", "RelayBusyError", "main"]

log = logging.getLogger("retrain.client.relay")

_F_SETPIPE_SZ = 1031  # Linux; a larger pipe takes a whole batch in one write
_PIPE_BYTES = 1 << 20


#: The old name of :class:`retrain.core.errors.RelayBusyError`, kept for code that imports it from here.
RelayBusy = RelayBusyError


@dataclass(frozen=True)
class RelayStats:
    written_rows: int
    acked_rows: int
    dropped_rows: int
    lost_rows: int
    starts: int
    unsent_bytes: int

    @property
    def in_flight_rows(self) -> int:
        return self.written_rows - self.acked_rows - self.dropped_rows - self.lost_rows


def _frame(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">II", 4 + len(head) + len(body), len(head)) + head + body


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    """The child's stdin and stdout: it is started with both as pipes."""
    assert proc.stdin is not None and proc.stdout is not None
    return proc.stdin, proc.stdout


class ProcessRelay:
    """A client sender that hands each message to a relay child process; never blocks.

    Parameters
    ----------
    broker_url: where the child sends (``--dry-run``: encodes each message as for the
        broker and discards it, for benchmarks).
    restart_after_s: the shortest time between two starts of the child.
    """

    def __init__(self, broker_url: str, *, dry_run: bool = False, restart_after_s: float = 1.0,
                 python: str = sys.executable) -> None:
        self.broker_url = broker_url
        self.dry_run = dry_run
        self.restart_after_s = restart_after_s
        self.python = python
        #: ``on_lost(rows, why)``: set by the client to count rows the child died holding.
        self.on_lost: Callable[[int, str], None] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = b""  # the rest of a frame the pipe did not take at once
        self._lines = b""
        self._lock = threading.RLock()
        self._written = self._acked = self._dropped = self._lost = self._starts = 0
        self._child_written = 0  # rows written to the current child
        self._child_done = 0  # of which acked or dropped
        self._flushed: dict[str, bool] = {}
        self._last_start = -1e9
        self._tokens = 0
        self._due_file: Any = None
        self._due_every = 0.0

    def due_limit(self, interval_s: float) -> memoryview:
        """The client's due threshold (one int64), in memory shared with the relay process,
        which sets it to 0 every ``interval_s``; starts the process (it keeps the time from now)."""
        with self._lock:
            if self._due_file is None:
                self._due_file = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
                self._due_file.truncate(8)
                self._due_map = mmap.mmap(self._due_file.fileno(), 8)
            self._due_every = float(interval_s)
            limit = memoryview(self._due_map).cast("q")
            try:
                self._ensure_child()
            except RelayBusyError:  # started at the first batch instead
                pass
            return limit

    # ------------------------------------------------------------------ sender
    def __call__(self, task: str, payload: dict[str, Any] | EncodedIngest, queue: str, priority: int) -> None:
        with self._lock:
            self._ensure_child()
            self.pump()
            if self._out:
                raise RelayBusyError(f"the relay process has not taken the last message yet ({len(self._out)} bytes)")
            if task == INGEST:
                enc = payload if isinstance(payload, EncodedIngest) else encode_ingest(payload)
                rows = enc.rows
                self._write(_frame({"task": task, "queue": queue, "priority": priority, "rows": rows,
                                    "batch_id": enc.batch_id, "model": enc.model,
                                    "client_dropped": enc.client_dropped}, enc.body))
            else:
                rows = 0
                self._write(_frame({"task": task, "queue": queue, "priority": priority, "payload": payload}))
            self._written += rows
            self._child_written += rows

    def pump(self) -> None:
        """Write what the pipe did not take, and read the child's answers; never blocks."""
        with self._lock:
            if self._proc is None:
                return
            if self._out:
                try:
                    self._write(b"")
                except RelayBusyError:  # the child is gone: _write counted what it held; restarted below
                    pass
            self._read_answers()
            if self._proc is not None and self._proc.poll() is not None:
                self._child_died(f"the relay process exited with {self._proc.returncode}")
            if self._proc is None and self._due_file is not None:  # it kept the client's time: start it again now
                try:
                    self._ensure_child()
                except RelayBusyError:  # too soon: the next batch starts it
                    pass

    def flush(self, timeout_s: float) -> bool:
        """Wait until the child says everything it was given reached the broker."""
        deadline = monotonic() + timeout_s
        with self._lock:
            if self._proc is None:
                return True
            self._tokens += 1
            token = str(self._tokens)
            self._out += _frame({"flush": token, "timeout_s": max(0.1, timeout_s - 0.2)})
        while monotonic() < deadline:
            with self._lock:
                if self._proc is None:
                    return False
                self.pump()
                if token in self._flushed:
                    return self._flushed.pop(token)
            self._wait_readable(min(0.05, max(0.0, deadline - monotonic())))
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the child send what it holds and exit (end of its input), then wait for it."""
        with self._lock:
            proc, self._proc = self._proc, None
            if self._due_file is not None:  # (the map stays: the client may still read it)
                self._due_file.close()
                self._due_file = None
        if proc is None:
            return
        deadline = monotonic() + timeout_s
        stdin, stdout = _pipes(proc)
        try:
            if self._out:
                os.set_blocking(stdin.fileno(), True)
                stdin.write(self._out)
                self._out = b""
            stdin.close()
        except OSError:
            pass
        try:
            proc.wait(max(0.1, deadline - monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        rest = stdout.read() or b""
        self._lines += rest
        self._parse_lines()
        stdout.close()
        unacked = self._child_written - self._child_done
        if unacked > 0:
            self._count_lost(unacked, "the relay process ended before the broker took them")

    @property
    def stats(self) -> RelayStats:
        return RelayStats(self._written, self._acked, self._dropped, self._lost, self._starts, len(self._out))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ------------------------------------------------------------------ internals
    def _ensure_child(self) -> None:
        if self._proc is not None:
            return
        now = monotonic()
        if now - self._last_start < self.restart_after_s:
            raise RelayBusyError("the relay process is restarting")
        self._last_start = now
        argv = [self.python, "-m", "retrain.client.relay", self.broker_url] + (["--dry-run"] if self.dry_run else [])
        keep: tuple[int, ...] = ()
        if self._due_file is not None:
            keep = (self._due_file.fileno(),)
            argv += ["--due-fd", str(keep[0]), "--due-every", repr(self._due_every)]
        env = dict(os.environ)
        # The child imports this very package, wherever the app found it.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
                                close_fds=True, pass_fds=keep)
        stdin, stdout = _pipes(proc)
        for f in (stdin, stdout):
            os.set_blocking(f.fileno(), False)
        try:
            fcntl.fcntl(stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: partial writes cope
            pass
        self._proc, self._out, self._lines = proc, b"", b""
        self._child_written = self._child_done = 0
        self._starts += 1

    def _write(self, data: bytes) -> None:
        buf = self._out + data if self._out else data
        assert self._proc is not None  # _ensure_child ran first
        try:
            n = os.write(_pipes(self._proc)[0].fileno(), buf)
        except BlockingIOError:
            n = 0
        except OSError as exc:  # the child is gone; frames it had are counted lost, this one is retried
            self._child_died(f"the relay process is gone ({exc})")
            raise RelayBusyError("the relay process is gone; it is started again") from None
        self._out = buf[n:]

    def _wait_readable(self, timeout: float) -> None:
        proc = self._proc
        if proc is None or timeout <= 0:
            return
        try:
            select.select([_pipes(proc)[1]], [], [], timeout)
        except (OSError, ValueError):
            pass

    def _read_answers(self) -> None:
        proc = self._proc
        while proc is not None:
            try:
                chunk = os.read(_pipes(proc)[1].fileno(), 65536)
            except OSError:  # nothing to read now (BlockingIOError), or the child is gone
                break
            if not chunk:
                break
            self._lines += chunk
        self._parse_lines()

    def _parse_lines(self) -> None:
        *lines, self._lines = self._lines.split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split()
            if len(parts) == 2 and parts[0] in ("ack", "dropped"):
                rows = int(parts[1])
                self._child_done += rows
                if parts[0] == "ack":
                    self._acked += rows
                else:
                    self._dropped += rows
            elif len(parts) == 3 and parts[0] == "flushed":
                self._flushed[parts[1]] = parts[2] == "1"

    def _child_died(self, why: str) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stdin, stdout = _pipes(proc)
            try:
                self._lines += stdout.read() or b""
            except OSError:
                pass
            self._parse_lines()
            for f in (stdin, stdout):
                try:
                    f.close()
                except OSError:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        self._out = b""
        unacked = self._child_written - self._child_done
        self._child_written = self._child_done = 0
        log.error("retrain client relay: %s", why)
        if unacked > 0:
            self._count_lost(unacked, why)

    def _count_lost(self, rows: int, why: str) -> None:
        self._lost += rows
        if self.on_lost is not None:
            self.on_lost(rows, f"{why}: {rows} rows it held are lost")


# ---------------------------------------------------------------------- the child
def _dry_run_sender(task: str, payload: Any, queue: str, priority: int) -> None:
    # What kombu would do with the message body, minus the socket (an encoded one goes as it is).
    if type(payload) is not EncodedIngest:
        json.dumps([[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])


def _read_exact(stream: Any, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _keep_time(fd: int, every_s: float) -> None:
    """Set the parent's due threshold to 0 every ``every_s`` (a daemon thread of the child)."""
    limit = memoryview(mmap.mmap(fd, 8)).cast("q")
    os.close(fd)

    def tick() -> None:
        while True:
            time.sleep(every_s)
            limit[0] = 0

    threading.Thread(target=tick, name="retrain-relay-clock", daemon=True).start()


_USAGE = "usage: python -m retrain.client.relay BROKER_URL [--dry-run] [--due-fd FD --due-every SECONDS]"


def main(argv: list[str] | None = None) -> int:
    """The relay process: frames on stdin to the broker, answers on stdout."""
    from retrain.client import RetrainClient, kombu_sender
    from retrain.client.replay_sender import replaying_sender

    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    args = [a for a in args if a != "--dry-run"]
    due: dict[str, str] = {}
    for flag in ("--due-fd", "--due-every"):
        if flag in args:
            i = args.index(flag)
            due[flag] = args[i + 1] if i + 1 < len(args) else ""
            del args[i:i + 2]
    if len(args) != 1 or len(due) == 1:
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        due_fd, due_every = (int(due["--due-fd"]), float(due["--due-every"])) if due else (None, 0.0)
    except ValueError:
        print(_USAGE, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s retrain-relay %(levelname)s %(message)s")
    if due_fd is not None and due_every > 0:
        _keep_time(due_fd, due_every)
    url = args[0]
    out = sys.stdout.buffer
    out_lock = threading.Lock()

    def answer(line: str) -> None:
        with out_lock:
            out.write(line.encode() + b"\n")
            out.flush()

    inner = _dry_run_sender if dry_run else replaying_sender(kombu_sender(url), url)

    def acking(task: str, payload: dict[str, Any] | EncodedIngest, queue: str, priority: int) -> None:
        inner(task, payload, queue, priority)
        if task == INGEST and isinstance(payload, EncodedIngest):  # (not a drop notice)
            answer(f"ack {payload.rows}")

    client = RetrainClient(sender=acking, mode="thread")
    dropped_before = 0

    def report_drops() -> None:
        nonlocal dropped_before
        now = client.stats.dropped_rows
        if now > dropped_before:
            answer(f"dropped {now - dropped_before}")
            dropped_before = now

    stdin = sys.stdin.buffer
    while True:
        head = _read_exact(stdin, 4)
        if head is None:
            break
        frame = _read_exact(stdin, struct.unpack(">I", head)[0])
        if frame is None:
            break
        try:
            (n,) = struct.unpack_from(">I", frame)
            msg = json.loads(frame[4:4 + n])
            body = frame[4 + n:]
        except (ValueError, struct.error) as exc:  # never from our parent; say so and go on
            log.error("relay: a frame that cannot be read (%s); skipped", exc)
            continue
        if "flush" in msg:
            ok = client.flush(float(msg.get("timeout_s", 10.0)))
            report_drops()
            answer(f"flushed {msg['flush']} {1 if ok else 0}")
        elif msg.get("task") == INGEST:
            rows = int(msg.get("rows", 0))
            client.enqueue_payload(EncodedIngest(body, str(msg.get("batch_id", "")), str(msg.get("model", "")), rows,
                                                 int(msg.get("client_dropped", 0))), rows)
            report_drops()
        else:  # a message that is not idempotent: sent once, now
            try:
                inner(msg["task"], msg["payload"], msg["queue"], int(msg["priority"]))
            except Exception as exc:  # the relay process must outlive any one message it cannot send
                log.error("relay: could not send %s: %s", msg.get("task"), exc)
    client.close(10.0)
    report_drops()
    return 0


if __name__ == "__main__":
    sys.exit(main())
