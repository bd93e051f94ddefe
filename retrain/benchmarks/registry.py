"""How fast the registry is on Postgres: registering, rolling back, answering history, collecting.

``retrain bench registry [--json]`` prints (:func:`run`), on a throwaway Postgres
database (``RETRAIN_BENCH_PG_ADMIN_URL``, default the local ``postgres`` superuser):

``register_p50_ms``, ``register_p99_ms``
    :func:`retrain.registry.register_version` in its own transaction (locks, bump,
    insert, audit, commit), one model, 200 versions in a row; the artifact is
    written beforehand and not timed.
``register_concurrent_per_s``
    the same from 4 threads with their own engines at once (each registration
    still gets its own number: the locks serialise them).
``rollback_p50_ms``, ``rollback_p99_ms``
    :func:`retrain.steps.promote.rollback`, what ``retrain rollback`` and the
    ``retrain.rollback`` task run: resolve the target, verify its artifact's
    sha256 (``rollback_artifact_bytes``), move the aliases, audit, commit. Once
    it returns, any reader of the aliases (the trading app's router) sees it.
``served_at_p50_ms``
    :func:`retrain.registry.aliases_at` for a random past time over a history of
    2,000 alias moves.
``gc_ms``, ``gc_versions_deleted``, ``gc_files_removed``
    one :func:`retrain.steps.retention.run_retention` over 200 versions, of which
    retention deletes all but the newest 10 and the protected ones.

Run ``python -m retrain.benchmarks.registry`` to print the figures as JSON.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = ["run"]

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
ROLLBACK_ARTIFACT_BYTES = 256_000


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _context(url: str, home: Path, clock):
    from retrain.artifacts import ArtifactStore
    from retrain.config import load_config
    from retrain.context import Context
    from retrain.settings import Settings
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    s = Settings(home=home, database_url=url, broker_url="memory://", artifact_root=home / "artifacts")
    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "direction.toml")
    return Context(store=Store(Database(url)), config=config, clock=clock, artifacts=ArtifactStore(home / "artifacts"),
                   settings=s, worker_id="bench")


def _new(ctx, model: str, tag: str, payload: bytes | None = None):
    from retrain.core.versioning import VersionSpec, fingerprint_json
    from retrain.registry import NewVersion

    art = ctx.artifacts.put_bytes(payload or f"model {model} {tag}".encode())
    spec = VersionSpec(("f0", "f1"), "retrain.examples.direction:train", fingerprint_json({"C": 1.0}),
                       fingerprint_json(tag))
    return NewVersion(model=model, spec=spec, artifact=art, data_rows=1000, params={"C": 1.0})


def run() -> dict[str, Any]:
    from retrain.benchmarks.decision import throwaway_database
    from retrain.core.clock import SimClock, monotonic
    from retrain.registry import aliases_at, move_alias, register_version
    from retrain.steps.promote import rollback
    from retrain.steps.retention import run_retention
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    out: dict[str, Any] = {}
    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        clock = SimClock(T0)
        ctx = _context(url, Path(tmp), clock)

        # Sequential registrations, a minute apart on the simulated clock.
        times = []
        for i in range(200):
            new = _new(ctx, "seq", str(i))
            clock.advance(timedelta(minutes=1))
            t = monotonic()
            with ctx.store.tx() as tx:
                register_version(tx, new, now=clock.now(), actor="bench", artifacts=ctx.artifacts)
            times.append((monotonic() - t) * 1000)
            if i == 0:
                with ctx.store.tx() as tx:
                    move_alias(tx, "seq", "production", "1.0.0", actor="bench", reason="first", now=clock.now())
        out["register_p50_ms"], out["register_p99_ms"] = _pct(times, 0.5), _pct(times, 0.99)

        # Concurrent registrations: 4 threads x 25, own engines.
        news = [[_new(ctx, "conc", f"{w}-{i}") for i in range(25)] for w in range(4)]
        barrier = threading.Barrier(4)

        def work(batch):
            store = Store(Database(url))
            barrier.wait()
            for new in batch:
                with store.tx() as tx:
                    register_version(tx, new, now=clock.now(), actor="bench", artifacts=ctx.artifacts)
            store.db.dispose()

        threads = [threading.Thread(target=work, args=(b,)) for b in news]
        t = monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out["register_concurrent_per_s"] = round(100 / (monotonic() - t), 1)

        # Rollbacks back and forth between two versions with a realistic artifact.
        rng = random.Random(7)
        for tag in ("a", "b"):
            new = _new(ctx, "rb", tag, rng.randbytes(ROLLBACK_ARTIFACT_BYTES))
            with ctx.store.tx() as tx:
                v = register_version(tx, new, now=clock.now(), actor="bench").version
                old = move_alias(tx, "rb", "production", v, actor="bench", reason="promote", now=clock.now())
                if old:
                    move_alias(tx, "rb", "previous", old, actor="bench", reason="replaced", now=clock.now())
        times = []
        for _ in range(100):
            clock.advance(timedelta(seconds=1))
            t = monotonic()
            rollback(ctx, "rb", None, actor="bench", reason="bench")
            times.append((monotonic() - t) * 1000)
        out["rollback_p50_ms"], out["rollback_p99_ms"] = _pct(times, 0.5), _pct(times, 0.99)
        out["rollback_artifact_bytes"] = ROLLBACK_ARTIFACT_BYTES

        # "Which version served at T" over a long history.
        with ctx.store.tx() as tx:
            for i in range(2000):
                move_alias(tx, "seq", rng.choice(["production", "canary", "candidate"]), f"1.{rng.randrange(200)}.0",
                           actor="bench", reason="history", now=T0 + timedelta(minutes=300 + i))
        times = []
        for _ in range(200):
            at = T0 + timedelta(minutes=rng.randrange(2300))
            t = monotonic()
            with ctx.store.tx() as tx:
                aliases_at(tx, "seq", at)
            times.append((monotonic() - t) * 1000)
        out["served_at_p50_ms"] = _pct(times, 0.5)
        out["history_moves"] = 2000

        # Retention over 200 versions of 'seq' (one of them production).
        t = monotonic()
        report = run_retention(ctx, ["seq"], orphans=True)
        out["gc_ms"] = round((monotonic() - t) * 1000, 1)
        out["gc_versions_deleted"] = len(report.deleted_versions)
        out["gc_files_removed"] = len(report.files)
        ctx.store.db.dispose()
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
