"""The monitoring sweep's cost per model as the number of models grows: 100, then 1,000.

A throwaway Postgres database (admin URL ``RETRAIN_BENCH_PG_ADMIN_URL``, default
``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``) holds 1,000 models, each
with a production version (its own baseline between 0.55 and 0.65), live buckets of
100 outcomes a minute for the last 10 h 20 min (what the performance window and the
emergency history read), and 200 sample rows; one model in 20 has lost 10 % of its
accuracy in the last hour, so the sweep also opens and refreshes requests. Drift
checks are off here (their cost is ``retrain bench drift``, and the sweep runs them
only every ``drift.check_every_minutes``).

After one warm-up sweep of all models (thresholds solved and cached, requests
opened), the sweep of the first 100 models and of all 1,000 is timed ``repeats``
times each, in alternation; the medians per model are reported
(``sweep_ms_per_model_100``, ``sweep_ms_per_model_1000``): flat when they are equal.

Run ``retrain bench sweep [--json]``.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = ["run"]

ADMIN_URL = os.environ.get("RETRAIN_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 1, 12, 12, tzinfo=timezone.utc)
FEATURES = [f"f{i}" for i in range(8)]


def _copy(engine, table: str, columns: list[str], rows) -> None:
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(str(v) for v in r) + "\n")
    buf.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
        raw.commit()
    finally:
        raw.close()


def _seed(ctx, engine, names: list[str], rng) -> None:
    import json

    from retrain.steps.requests import sync_models

    sync_models(ctx)
    minutes = 620
    start = NOW - timedelta(minutes=minutes)
    bases = {name: round(float(rng.uniform(0.55, 0.65)), 3) for name in names}
    with ctx.store.tx() as tx:
        for name in names:
            tx.models.set_deployed(name, NOW - timedelta(days=30))
            base = bases[name]
            tx.versions.add(model=name, version="1.0.0", major=1, minor=0, patch=0, status="production",
                            created_at=NOW - timedelta(days=30), deleted_at=None, artifact_sha256="0" * 64,
                            artifact_size=1, bump_kind="initial", bump_reason="bench", parent_version=None,
                            data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=FEATURES,
                            params={}, metrics={"baseline": {"accuracy": base}}, git_commit=None, request_id=None,
                            decision_id=None, run_id=None, cost_usd=0.0)
            tx.aliases.move(name, "production", "1.0.0", actor="bench", reason="seed", now=NOW - timedelta(days=30))

    def buckets():
        for i, name in enumerate(names):
            base = bases[name]
            degraded = i % 20 == 0
            acc = [base * (0.9 if degraded and m >= minutes - 60 else 1.0) for m in range(minutes)]
            hits = rng.binomial(100, acc)
            for m in range(minutes):
                k = int(hits[m])
                yield (name, "1.0.0", (start + timedelta(minutes=m)).isoformat(), 100, k, 0, 0, 100 - k,
                       0.001 * (2 * k - 100), 1e-4, 0)

    _copy(engine, "metric_buckets", ["model", "version", "minute", "n", "tp", "fp", "tn", "fn", "ret_sum",
                                     "ret_sq_sum", "unlabelled"], buckets())

    def samples():
        for name in names:
            x = rng.normal(size=(200, 8)).round(6)
            for j in range(200):
                yield (name, "1.0.0", (NOW - timedelta(seconds=60 * j)).isoformat(), json.dumps(x[j].tolist()), 1, 1,
                       0.0)

    _copy(engine, "feature_samples", ["model", "version", "ts", "features", "prediction", "label", "ret"], samples())


def run(models: int = 1000, small: int = 100, repeats: int = 3) -> dict[str, Any]:
    import numpy as np
    from sqlalchemy import create_engine, text

    from retrain.artifacts import ArtifactStore
    from retrain.config import parse_config
    from retrain.context import Context
    from retrain.core.clock import SimClock
    from retrain.settings import Settings
    from retrain.steps.sweep import sweep
    from retrain.storage.db import Database, make_engine
    from retrain.storage.repo import Store
    from retrain.storage.schema import upgrade

    name = f"retrain_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="retrain-bench-sweep-"))
    try:
        engine = make_engine(url)
        upgrade(engine)
        names = [f"model{i:04d}" for i in range(models)]
        cfg = parse_config({"models": {n: {"entry_point": "retrain.examples.direction:train", "features": FEATURES,
                                           "drift": {"enabled": False}} for n in names}})
        settings = Settings(home=tmp, database_url=url, broker_url="memory://", artifact_root=tmp / "artifacts")
        ctx = Context(store=Store(Database(url)), config=cfg, clock=SimClock(NOW), artifacts=ArtifactStore(tmp / "a"),
                      settings=settings, worker_id="bench")
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        _seed(ctx, engine, names, rng)
        with engine.connect() as c:
            c.execute(text("ANALYZE"))
        seed_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        warm = sweep(ctx)
        warm_s = time.perf_counter() - t0
        t_small, t_all = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sweep(ctx, names[:small])
            t_small.append((time.perf_counter() - t0) * 1000 / small)
            t0 = time.perf_counter()
            last = sweep(ctx)
            t_all.append((time.perf_counter() - t0) * 1000 / models)
        ctx.store.db.dispose()
        engine.dispose()
        return {
            "sweep_ms_per_model_100": round(statistics.median(t_small), 3),
            "sweep_ms_per_model_1000": round(statistics.median(t_all), 3),
            "ratio_1000_to_100": round(statistics.median(t_all) / statistics.median(t_small), 2),
            "first_sweep_ms_per_model_1000": round(warm_s * 1000 / models, 3),
            "requests_opened_first_sweep": len(warm.requests_opened),
            "requests_refreshed_per_sweep": len(last.requests_refreshed),
            "buckets_per_model": 620,
            "seed_s": round(seed_s, 1),
            "repeats": repeats,
        }
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
