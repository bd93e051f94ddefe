"""Serving in the trading app's process: route each prediction to production or the canary.

:class:`ModelRouter` holds the verified artifacts of the model's ``production``
version and, during a staged rollout, of its ``canary``, and sends each prediction
to one of them by a stable hash of a routing key (an instrument, an account): with
the canary at 25 %, the same quarter of the keys sees the canary in every process,
and a key that saw the canary at 10 % keeps seeing it at 25 % and 50 %.

``predict`` never waits for I/O: a background thread reads the aliases when they
change and loads the new artifacts (sha256 verified by
:class:`~retrain.artifacts.ArtifactStore`) before swapping them in with one reference
assignment. On Postgres every alias move is announced at its commit
(``LISTEN``/``NOTIFY`` on :data:`~retrain.storage.repo.ROUTES_CHANNEL`), so the thread
sleeps in ``select`` until something moves (and re-reads every ``resync_s`` in case);
elsewhere (SQLite) it polls every ``refresh_s``. Waking costs the app more than the
query: in a process whose model releases and retakes the GIL often (scikit-learn's
input checks do), a thread waiting for the GIL burns milliseconds of CPU each time it
wakes, so the router wakes only when it has something to do. A rollback (canary
cleared) needs no load, so the router serves production alone moments after the
decision commits. A failed read or load keeps the last good models, is logged and
counted (``stats``), and is tried again.

Example
-------
>>> from retrain.client import RetrainClient                      # doctest: +SKIP
>>> client = RetrainClient("redis://127.0.0.1:6379/0")            # doctest: +SKIP
>>> router = ModelRouter.connect("direction", database_url="postgresql://retrain@db/retrain",
...                              artifact_root="/srv/retrain/artifacts", client=client)  # doctest: +SKIP
>>> prediction, version = router.predict(features, key="ES-H27", prediction_id=order_id)  # doctest: +SKIP
>>> client.report_outcome("direction", order_id, label=1, ret=0.0012)                   # doctest: +SKIP
>>> router.close(); client.close()                                                      # doctest: +SKIP

The routing decision alone is :func:`routes_to_canary`, for an app that serves the
models itself (the backtester does):

>>> routes_to_canary("ES-H27", 100.0), routes_to_canary("ES-H27", 0.0)
(True, False)
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from retrain.core.clock import monotonic as time_monotonic
from retrain.core.errors import RetrainError

if TYPE_CHECKING:
    from retrain.storage.repo import Store

__all__ = ["ROUTING_BUCKETS", "routing_bucket", "routes_to_canary", "Routing", "RoutingReader",
           "StoreRoutingReader", "RouteNotices", "PostgresRouteNotices", "RouterStats", "ModelRouter"]

log = logging.getLogger("retrain.serving")
_crc32 = zlib.crc32

#: Keys hash into this many buckets: shares are honoured to 0.01 %.
ROUTING_BUCKETS = 10_000


def routing_bucket(key: str) -> int:
    """The key's bucket in ``[0, ROUTING_BUCKETS)``: CRC-32 of its UTF-8 bytes, the same in every process."""
    return zlib.crc32(key.encode()) % ROUTING_BUCKETS


def routes_to_canary(key: str, share_pct: float) -> bool:
    """Whether the prediction for ``key`` goes to the canary when it has ``share_pct`` % of the traffic.

    Stable (no per-process hash seed) and monotone in the share: a key routed to the
    canary at 10 % is routed to it at every larger share.

    >>> sum(routes_to_canary(f"acct-{i}", 25.0) for i in range(10_000)) / 10_000
    0.2486
    """
    return zlib.crc32(key.encode()) % ROUTING_BUCKETS < share_pct * 100.0


_F8 = np.dtype(np.float64)
_NDARRAY = np.ndarray


def _one_prediction(y: Any) -> Any:
    if len(y) != 1:
        raise ValueError(f"predict takes one row of features, the model answered {len(y)} predictions")
    return y[0]


def _one_row(features: Any) -> np.ndarray:
    """``features`` as a ``(1, n)`` float64 array; ValueError for more than one row."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim > 2 or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"predict takes one row of features, got an array of shape {x.shape}")
    return x.reshape(1, -1)


@dataclass(frozen=True)
class Routing:
    """What a model serves: production, and a canary with its share of the traffic (0 when none)."""

    production: str | None = None
    production_sha256: str | None = None
    canary: str | None = None
    canary_sha256: str | None = None
    share_pct: float = 0.0


#: ``reader(model) -> Routing``: the router's only view of the database (injected).
RoutingReader = Callable[[str], Routing]


class ArtifactLoader(Protocol):
    """What the router needs of an artifact store (:class:`~retrain.artifacts.ArtifactStore` is one)."""

    def load_object(self, sha256: str) -> Any: ...


class PredictionReporter(Protocol):
    """What the router needs of a client (:class:`~retrain.client.RetrainClient` is one)."""

    def report_prediction(self, model: str, prediction_id: str, features: Any, prediction: int,
                          version: str, ts: float | None = None) -> None: ...

    def report_outcome(self, model: str, prediction_id: str, label: int, ret: float | None = None) -> None: ...


class StoreRoutingReader:
    """Reads ``production`` and ``canary`` (with the canary's share) from the retrain database: one query."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def from_url(cls, database_url: str) -> StoreRoutingReader:
        from retrain.storage.db import Database
        from retrain.storage.repo import Store

        return cls(Store(Database(database_url)))

    def notices(self, model: str) -> PostgresRouteNotices | None:
        """A listener for the model's alias moves on Postgres; None elsewhere (the router polls)."""
        if not self.store.db.is_postgres:
            return None
        return PostgresRouteNotices(self.store.db.engine, model)

    def __call__(self, model: str) -> Routing:
        with self.store.tx() as tx:
            routes = tx.aliases.serving_routes(model)
        prod, canary = routes.get("production"), routes.get("canary")
        if canary is not None and canary[1] <= 0:
            canary = None
        return Routing(prod[0] if prod else None, prod[2] if prod else None, canary[0] if canary else None,
                       canary[2] if canary else None, canary[1] if canary else 0.0)


class RouteNotices(Protocol):
    """What the router needs of a change feed: block until the routes may have changed."""

    def wait(self, timeout: float) -> bool:
        """True when the model's routes may have changed (a notice, or a new connection after a lost
        one); False on timeout or after :meth:`interrupt`. Raises when the feed is out of reach."""

    def interrupt(self) -> None:
        """Make a blocked :meth:`wait` return now (called from another thread)."""

    def close(self) -> None: ...


class PostgresRouteNotices:
    """``LISTEN`` for one model's alias moves on a dedicated autocommit connection (psycopg2).

    ``aliases.move`` sends ``pg_notify(ROUTES_CHANNEL, model)`` in the moving transaction,
    so a notice arrives exactly when a move commits. Waiting is a ``select`` on the
    connection's socket and a pipe (for :meth:`interrupt`): no query, no GIL, until then.
    """

    def __init__(self, engine: Any, model: str) -> None:
        from retrain.storage.repo import ROUTES_CHANNEL

        self.engine, self.model, self.channel = engine, model, ROUTES_CHANNEL
        self._conn: Any = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        raw.detach()  # ours for good: never back into the pool in LISTEN state
        conn = raw.dbapi_connection
        if not (hasattr(conn, "poll") and hasattr(conn, "notifies")):
            raw.close()
            raise RetrainError(f"LISTEN needs psycopg2, not {type(conn).__module__}")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'LISTEN "{self.channel}"')
        self._conn = conn

    def wait(self, timeout: float) -> bool:
        if self._closed:
            return False
        if self._conn is None:
            self._listen()
            return True  # anything may have moved while we were not listening
        deadline = time_monotonic() + timeout
        while not self._closed:
            left = deadline - time_monotonic()
            if left <= 0:
                self._check()  # a connection that died without a word would never speak again
                return False
            ready, _, _ = select.select([self._conn, self._wake_r], [], [], left)
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
                return False
            if ready:
                try:
                    self._conn.poll()
                except Exception:  # whatever the driver raised: the connection is suspect; drop it, raise the same
                    self._drop()
                    raise
                hits = [n for n in self._conn.notifies if n.payload == self.model]
                self._conn.notifies.clear()
                if hits:
                    return True
        return False

    def _check(self) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
        except Exception:  # whatever the driver raised: the connection is suspect; drop it, raise the same
            self._drop()
            raise

    def interrupt(self) -> None:
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # already closed
            pass

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass

    def close(self) -> None:
        self.interrupt()
        self._drop()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass(frozen=True)
class RouterStats:
    production: str | None
    canary: str | None
    share_pct: float
    refreshes: int
    changes: int
    errors: int
    last_error: str | None


class _Active:
    """One immutable snapshot, swapped by a single assignment: predict reads it once."""

    __slots__ = ("routing", "production", "canary", "production_version", "canary_version", "limit")

    def __init__(self, routing: Routing, production: Any, canary: Any) -> None:
        self.routing, self.production, self.canary = routing, production, canary
        assert routing.production is not None  # refresh() serves nothing without a production version
        self.production_version: str = routing.production
        # Read only when a key routes to the canary, which needs a loaded canary, hence its version.
        self.canary_version = cast(str, routing.canary)
        # routes_to_canary(key, share) is crc32(key) % ROUTING_BUCKETS < share * 100.
        self.limit = routing.share_pct * 100.0 if canary is not None else -1.0


class ModelRouter:
    """Routes one model's predictions between production and the canary, and reports them.

    Parameters
    ----------
    model: the model's name in the model file.
    reader: ``reader(model) -> Routing``, e.g. :class:`StoreRoutingReader` (see :meth:`connect`).
    artifacts: an :class:`~retrain.artifacts.ArtifactStore` (verifies sha256 on load), or any
        ``load(sha256) -> estimator``.
    client: a :class:`~retrain.client.RetrainClient`; each prediction is reported with the
        version that made it. None: no reporting.
    refresh_s: seconds between polls of the aliases when there is no change feed (or it is
        out of reach).
    notices: a change feed (:class:`RouteNotices`, e.g. :class:`PostgresRouteNotices`): the
        router then re-reads the aliases when told, and every ``resync_s`` besides.
    start: start the background refresh (tests call :meth:`refresh` themselves).
    """

    def __init__(self, model: str, *, reader: RoutingReader, artifacts: ArtifactLoader | Callable[[str], Any],
                 client: PredictionReporter | None = None,
                 refresh_s: float = 1.0, notices: RouteNotices | None = None, resync_s: float = 30.0,
                 start: bool = True) -> None:
        self.model = model
        self.refresh_s = refresh_s
        self.resync_s = resync_s
        self._notices = notices
        self._reader = reader
        self._load = cast("Callable[[str], Any]", getattr(artifacts, "load_object", artifacts))
        self._client = client
        self._report = client.report_prediction if client is not None else None
        # A RetrainClient lets the hot path append to its buffer itself (retrain.client.PredictionSink).
        sink = getattr(client, "prediction_sink", None)
        # _due_at and _due are read only when _buffer is not None: they come with it.
        self._buffer: collections.deque[Any] | None
        self._due_at: Any
        self._due: Any
        self._buffer, self._due_at, self._due = sink() if sink is not None else (None, None, None)
        self._active: _Active | None = None
        self._wanted: Routing | None = None
        self._cache: dict[str, Any] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._refreshes = self._changes = self._errors = 0
        self._last_error: str | None = None
        self._seq = itertools.count()
        self._prefix = f"{model}-{os.getpid()}-{id(self) & 0xFFFFFF:x}-"
        self.refresh()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name=f"retrain-router-{model}", daemon=True)
            self._thread.start()

    @classmethod
    def connect(cls, model: str, *, database_url: str, artifact_root: str | Path,
                client: PredictionReporter | None = None,
                refresh_s: float = 1.0, resync_s: float = 30.0, start: bool = True) -> ModelRouter:
        """A router reading the retrain database and artifact store directly (read-only use);
        on Postgres it follows alias moves by ``LISTEN``, elsewhere it polls every ``refresh_s``."""
        from retrain.artifacts import ArtifactStore

        reader = StoreRoutingReader.from_url(database_url)
        return cls(model, reader=reader, artifacts=ArtifactStore(Path(artifact_root)), client=client,
                   refresh_s=refresh_s, notices=reader.notices(model), resync_s=resync_s, start=start)

    # ------------------------------------------------------------------ hot path
    def predict(self, features: Any, key: str, *, prediction_id: str | None = None,
                ts: float | None = None) -> tuple[int, str]:
        """Predict one row with the version ``key`` routes to; returns ``(prediction, version)``.

        ``features`` is one row (a sequence, a 1-D array or a ``(1, n)`` array). The
        prediction is reported through the client under ``prediction_id`` (pass the id
        you will report the outcome with; a generated one otherwise).
        """
        a = self._active
        if a is None:
            raise RetrainError(f"{self.model}: no production version loaded yet "
                               f"({self._last_error or 'none in the database'})")
        # Every object this touches costs here: the model's predict has just evicted our code and
        # data from the CPU's caches (each line below was measured that way). Without a canary no
        # key is hashed; with one, CRC-32 of the key is cheaper than a dict of remembered buckets.
        if a.limit >= 0.0 and _crc32(key.encode()) % ROUTING_BUCKETS < a.limit:
            version, est = a.canary_version, a.canary
        else:
            version, est = a.production_version, a.production
        if type(features) is not _NDARRAY or features.dtype is not _F8 or features.ndim != 2:
            features = _one_row(features)
        y = est.predict(features)
        try:
            pred = y.item()  # and ValueError unless exactly one prediction: one row
        except AttributeError:  # a model that answers with a list
            pred = _one_prediction(y)
        except ValueError:
            raise ValueError(f"predict takes one row of features, got an array of shape {features.shape}") from None
        if type(pred) is not int:  # (a model trained on float or bool labels)
            pred = int(pred)
        buf, report = self._buffer, self._report
        if report is not None:
            pid = prediction_id if prediction_id is not None else f"{self._prefix}{next(self._seq)}"
            # tobytes is a copy (the app may reuse its buffer before the rows are packed) and the
            # client's cheapest form to pack.
            if buf is not None:  # a RetrainClient's report_prediction, inlined (one frame less)
                buf.append(("p", self.model, pid, features.tobytes(), pred, version, ts))
                if len(buf) >= self._due_at[0]:
                    self._due()
            else:
                report(self.model, pid, features.tobytes(), pred, version, ts)
        return pred, version

    def route(self, key: str) -> tuple[str, Any]:
        """The version ``key`` routes to now and its loaded model: what :meth:`predict` would use
        (for an app that predicts by itself, in batches, and reports through the client)."""
        a = self._active
        if a is None:
            raise RetrainError(f"{self.model}: no production version loaded yet "
                               f"({self._last_error or 'none in the database'})")
        if a.limit >= 0.0 and routing_bucket(key) < a.limit:
            return a.canary_version, a.canary
        return a.production_version, a.production

    def report_outcome(self, prediction_id: str, label: int, ret: float | None = None) -> None:
        """The realised label (and return) of an earlier :meth:`predict`, through the client."""
        if self._client is not None:
            self._client.report_outcome(self.model, prediction_id, label, ret)

    # ------------------------------------------------------------------ state
    @property
    def routing(self) -> Routing:
        """What is being served now (a canary that failed to load is not in it)."""
        a = self._active
        return a.routing if a is not None else Routing()

    @property
    def stats(self) -> RouterStats:
        r = self.routing
        return RouterStats(r.production, r.canary, r.share_pct, self._refreshes, self._changes, self._errors,
                           self._last_error)

    def refresh(self) -> bool:
        """Poll the aliases once and load what changed; True if what is served changed."""
        with self._refresh_lock:
            self._refreshes += 1
            try:
                wanted = self._reader(self.model)
            except Exception as exc:  # the database may be down: keep serving what we have
                self._fail("reading the aliases", exc)
                return False
            active = self._active
            if active is not None and wanted == self._wanted and active.routing == wanted:
                return False
            self._wanted = wanted
            if wanted.production is None:
                if active is None:
                    self._last_error = self._last_error or "no production version"
                return False  # never stop serving because an alias was cleared
            try:
                prod = self._get(wanted.production_sha256)
            except Exception as exc:  # loading runs the model's own code: keep serving what we have
                self._fail(f"loading production {wanted.production}", exc)
                return False
            canary, routing = None, wanted
            if wanted.canary is not None and wanted.share_pct > 0:
                try:
                    canary = self._get(wanted.canary_sha256)
                except Exception as exc:  # loading runs the model's own code: serve production alone
                    self._fail(f"loading canary {wanted.canary}", exc)
                    routing = Routing(wanted.production, wanted.production_sha256)
            else:
                routing = Routing(wanted.production, wanted.production_sha256)
            if active is not None and active.routing == routing:
                return False
            self._active = _Active(routing, prod, canary)
            self._changes += 1
            keep = {routing.production_sha256, routing.canary_sha256}
            for sha in [s for s in self._cache if s not in keep]:
                del self._cache[sha]
            log.info("%s: serving production %s%s", self.model, routing.production,
                     f", canary {routing.canary} at {routing.share_pct:g}%" if routing.canary else "")
            return True

    def close(self) -> None:
        self._stop.set()
        if self._notices is not None:
            self._notices.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._notices is not None:
            self._notices.close()

    def __enter__(self) -> ModelRouter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _get(self, sha256: str | None) -> Any:
        if sha256 is None:
            raise RetrainError("the version has no artifact digest")
        est = self._cache.get(sha256)
        if est is None:
            est = self._cache[sha256] = self._load(sha256)
        return est

    def _fail(self, what: str, exc: Exception) -> None:
        self._errors += 1
        message = f"{what}: {type(exc).__name__}: {exc}"
        if message != self._last_error or self._errors % 60 == 0:
            log.error("%s router: %s (keeping the last good models; error %d)", self.model, message, self._errors)
        self._last_error = message

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._notices is not None:
                try:
                    self._notices.wait(self.resync_s)  # a move, a new connection, or time to resync
                except Exception as exc:  # not listening: poll until the feed is back
                    self._fail("listening for alias moves", exc)
                    if self._stop.wait(self.refresh_s):
                        return
            elif self._stop.wait(self.refresh_s):
                return
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:  # the refresher must outlive any one bad poll
                log.exception("%s router: refresh failed", self.model)
