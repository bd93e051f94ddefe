"""The trading app's router: stable routing by key, following alias changes without blocking,
keeping the last good models when a load fails, and reporting each prediction with its version."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import retrain.serving as serving
from retrain.client import RetrainClient
from retrain.core.errors import ArtifactError, RetrainError
from retrain.serving import ModelRouter, Routing, routes_to_canary, routing_bucket
from tests.procs import until


class Const:
    """An estimator that always predicts ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def predict(self, X):
        return np.full(len(X), self.value)


class Reader:
    """The aliases as the database would return them; tests change ``routing`` at will."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.fail: Exception | None = None
        self.calls = 0

    def __call__(self, model: str) -> Routing:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.routing


class Loader:
    def __init__(self, objects: dict[str, object]) -> None:
        self.objects = objects
        self.loads: list[str] = []

    def __call__(self, sha: str):
        self.loads.append(sha)
        obj = self.objects[sha]
        if isinstance(obj, Exception):
            raise obj
        return obj


PROD = Routing("1.0.0", "a" * 64)
SPLIT = Routing("1.0.0", "a" * 64, "1.1.0", "b" * 64, 25.0)


def _router(reader, loader=None, **kw) -> ModelRouter:
    loader = loader or Loader({"a" * 64: Const(0), "b" * 64: Const(1)})
    return ModelRouter("direction", reader=reader, artifacts=loader, start=kw.pop("start", False), **kw)


def test_public_names_are_pinned():
    assert sorted(serving.__all__) == sorted(["ROUTING_BUCKETS", "routing_bucket", "routes_to_canary", "Routing",
                                              "RoutingReader", "StoreRoutingReader", "RouteNotices",
                                              "PostgresRouteNotices", "RouterStats", "ModelRouter"])
    assert {"predict", "report_outcome", "refresh", "routing", "stats", "close", "connect"} <= set(dir(ModelRouter))


def test_routing_is_a_stable_hash_the_same_in_every_process():
    # Pinned values: a change here would move live traffic between versions on deploy
    assert [routing_bucket(k) for k in ("ES-H27", "acct-1", "")] == [
        __import__("zlib").crc32(k.encode()) % 10_000 for k in ("ES-H27", "acct-1", "")]
    assert routing_bucket("ES-H27") == 1698
    assert not routes_to_canary("anything", 0.0) and routes_to_canary("anything", 100.0)


def test_shares_are_honoured_and_a_canary_key_stays_canary_as_the_share_grows():
    keys = [f"order-{i}" for i in range(40_000)]
    prev: set[str] = set()
    for share in (10.0, 25.0, 50.0, 100.0):
        now = {k for k in keys if routes_to_canary(k, share)}
        assert abs(len(now) / len(keys) - share / 100) < 0.01
        assert prev <= now
        prev = now


def test_predict_routes_by_key_and_returns_the_version_that_predicted():
    router = _router(Reader(SPLIT))
    seen = {}
    for i in range(4000):
        key = f"k{i}"
        pred, version = router.predict([0.1] * 8, key)
        assert version == ("1.1.0" if routes_to_canary(key, 25.0) else "1.0.0")
        assert pred == (1 if version == "1.1.0" else 0)
        seen[version] = seen.get(version, 0) + 1
    assert 0.22 < seen["1.1.0"] / 4000 < 0.28
    # The same key always gets the same version
    assert {router.predict(np.zeros(8), "k7")[1] for _ in range(10)} == {router.predict([0] * 8, "k7")[1]}
    # And route() names the version and model predict uses, for an app that predicts by itself
    for key in ("k1", "k2", "k3", "k7", "k11"):
        version, est = router.route(key)
        assert (int(est.predict(np.zeros((1, 8)))[0]), version) == router.predict(np.zeros(8), key)


def test_the_router_follows_a_split_change_and_a_rollback_at_its_next_refresh():
    reader = Reader(PROD)
    router = _router(reader)
    assert router.routing == PROD
    reader.routing = SPLIT
    assert router.routing == PROD  # nothing changes between polls
    assert router.refresh() and router.routing == SPLIT
    # When the canary is cleared (a rollback), no load is needed: production alone at the next poll
    reader.routing = PROD
    assert router.refresh()
    assert {router.predict([0] * 8, f"k{i}")[1] for i in range(1000)} == {"1.0.0"}
    assert not router.refresh()  # nothing new


def test_a_failed_load_keeps_the_last_good_models_and_is_counted(caplog):
    loader = Loader({"a" * 64: Const(0), "b" * 64: ArtifactError("artifact sha256=bbbb is corrupt"),
                     "c" * 64: ArtifactError("missing")})
    reader = Reader(PROD)
    router = _router(reader, loader)
    # A canary that cannot be loaded is not served: production takes all traffic
    reader.routing = SPLIT
    router.refresh()
    assert router.routing == PROD and router.stats.errors == 1 and "corrupt" in router.stats.last_error
    # A production that cannot be loaded leaves the last good production serving
    reader.routing = Routing("2.0.0", "c" * 64)
    assert not router.refresh()
    assert router.predict([0] * 8, "k")[1] == "1.0.0" and router.stats.errors == 2
    # A database that does not answer changes nothing either
    reader.fail = ConnectionError("server closed the connection")
    assert not router.refresh() and router.stats.errors == 3
    assert router.predict([0] * 8, "k")[1] == "1.0.0"
    assert "keeping the last good models" in caplog.text
    # Once the canary's artifact is good again it is served at the next poll
    reader.fail = None
    loader.objects["b" * 64] = Const(1)
    reader.routing = SPLIT
    assert router.refresh() and router.routing == SPLIT


def test_no_production_yet_is_a_clear_error_until_one_appears():
    reader = Reader(Routing())
    router = _router(reader)
    with pytest.raises(RetrainError, match="no production version loaded yet"):
        router.predict([0] * 8, "k")
    with pytest.raises(RetrainError, match="no production version loaded yet"):
        router.route("k")
    reader.routing = PROD
    router.refresh()
    assert router.predict([0] * 8, "k") == (0, "1.0.0")


def test_the_background_refresh_follows_changes_without_blocking_predict():
    reader = Reader(PROD)
    slow = threading.Event()

    class SlowLoader(Loader):
        def __call__(self, sha):
            if sha == "b" * 64:
                slow.wait(2)  # a large artifact loading in the background
            return super().__call__(sha)

    router = _router(reader, SlowLoader({"a" * 64: Const(0), "b" * 64: Const(1)}), start=True, refresh_s=0.02)
    try:
        reader.routing = SPLIT
        # While the canary loads, predict keeps answering from production without waiting
        t0 = time.perf_counter()
        for i in range(200):
            assert router.predict([0] * 8, f"k{i}")[1] == "1.0.0"
        assert time.perf_counter() - t0 < 1.0
        slow.set()
        deadline = time.monotonic() + 5
        while router.routing != SPLIT and time.monotonic() < deadline:
            time.sleep(0.01)
        assert router.routing == SPLIT
    finally:
        router.close()


def test_each_prediction_is_reported_with_the_version_that_made_it():
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, payload, queue, prio: sent.append(payload), start=False)
    router = _router(Reader(SPLIT), client=client)
    keys = [f"k{i}" for i in range(300)]
    served = {k: router.predict(np.ones((1, 8)), k, prediction_id=f"p-{k}", ts=1767225600.0) for k in keys}
    for k in keys[:100]:
        router.report_outcome(f"p-{k}", label=1, ret=0.001)
    router.predict([0.5] * 8, "no-id")  # reported under a generated id
    client.close(timeout_s=2)
    rows = {}
    for p in sent:
        for i, pid in enumerate(p["id"]):
            rows[pid] = (p["version"][i], p["prediction"][i], p["label"][i], p["x"][i])
    for k, (pred, version) in served.items():
        assert rows[f"p-{k}"][:2] == (version, pred)
    assert sum(1 for k in keys if rows[f"p-{k}"][2] == 1) == 100
    assert len(rows) == 301


def test_features_in_any_row_form_are_predicted_and_reported_as_given_and_more_rows_are_refused():
    # Given a router reporting through a client
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, payload, queue, prio: sent.append(payload), start=False)
    router = _router(Reader(PROD), client=client)
    base = np.arange(16, dtype=np.float64).reshape(2, 8)
    forms = {
        "list": [0.5] * 8,
        "1-d": np.linspace(0, 1, 8),
        "float32": np.full((1, 8), 0.25, dtype=np.float32),
        "column slice": np.asfortranarray(base)[1:2],  # not C-contiguous
        "big-endian": np.full((1, 8), 3.0, dtype=">f8"),
    }
    # When each is predicted, and an array of two rows
    for name, x in forms.items():
        assert router.predict(x, name, prediction_id=name, ts=1767225600.0) == (0, "1.0.0")
    with pytest.raises(ValueError, match="one row"):
        router.predict(base, "two rows")
    client.close(timeout_s=2)
    # Then each row went out with exactly its values, as float64
    from retrain.core.columns import unpack_f8

    got = {}
    for p in sent:
        x = unpack_f8(p["x"]).reshape(-1, p["n_features"])
        got.update({pid: x[i].tolist() for i, pid in enumerate(p["id"])})
    assert set(got) == set(forms)
    for name, x in forms.items():
        assert got[name] == np.asarray(x, dtype=np.float64).ravel().tolist(), name


class Notices:
    """A change feed the test drives: ``notify()`` wakes the router's wait."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending = 0
        self.fail: Exception | None = None
        self.waits = 0
        self.closed = False

    def notify(self) -> None:
        with self.cond:
            self.pending += 1
            self.cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.cond:
            self.waits += 1
            if self.fail is not None:
                raise self.fail
            got = self.cond.wait_for(lambda: self.pending or self.closed, timeout)
            self.pending = 0
            return bool(got) and not self.closed

    def interrupt(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def close(self) -> None:
        self.interrupt()


def test_with_a_change_feed_the_router_reads_on_a_notice_instead_of_polling():
    # Given a router with a change feed, a long resync, and a poll interval it must not use
    reader, notices = Reader(PROD), Notices()
    router = _router(reader, start=True, notices=notices, refresh_s=0.01, resync_s=60)
    try:
        time.sleep(0.3)
        assert reader.calls == 1  # the first read at start, then no polling
        # When the aliases move and the feed says so
        reader.routing = SPLIT
        notices.notify()
        deadline = time.monotonic() + 5
        while router.routing != SPLIT and time.monotonic() < deadline:
            time.sleep(0.005)
        # Then the router follows at once, with one more read
        assert router.routing == SPLIT and reader.calls == 2
        # And when the feed is out of reach, it polls every refresh_s until it is back
        notices.fail = ConnectionError("database down")
        notices.notify()
        # (bounded wait, not a fixed sleep: a loaded CI machine may run the thread late)
        assert until(lambda: reader.calls > 5, timeout=10)
        assert "listening for alias moves" in (router.stats.last_error or "")
        notices.fail = None
        time.sleep(0.1)
        calls = reader.calls
        time.sleep(0.3)
        assert reader.calls == calls  # listening again: polling stopped
    finally:
        t0 = time.monotonic()
        router.close()
        assert time.monotonic() - t0 < 2 and notices.closed  # close interrupts the wait


class ListModel:
    """A model that answers with a plain list."""

    def predict(self, X):
        return [1.0] * len(X)


def test_a_prediction_is_an_int_whatever_the_model_answers_with():
    # Given models answering with float labels, bools, and a plain list
    answers = {"a" * 64: Const(1.0), "b" * 64: Const(True), "c" * 64: ListModel()}
    for sha in answers:
        router = _router(Reader(Routing("1.0.0", sha)), Loader(answers))
        # When one row is predicted, then the prediction is an int
        pred, version = router.predict(np.zeros((1, 8)), "k")
        assert (pred, type(pred), version) == (1, int, "1.0.0"), sha
    # And a list answering for two rows is refused as more than one row
    router = _router(Reader(Routing("1.0.0", "c" * 64)), Loader(answers))
    with pytest.raises(ValueError, match="one row"):
        router.predict(np.zeros((2, 8)), "k")
