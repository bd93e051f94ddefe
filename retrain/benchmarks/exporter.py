"""``retrain bench exporter``: how long one scrape of ``retrain exporter`` takes with 100 models.

A throwaway Postgres database gets 100 models, each with a production version and 6 hours
of minute buckets (live windows of 240 and 5 minutes), a day of ingested batches, requests,
decisions, runs, ledger rows, drift reports and dead letters. The history is counted once
(as the exporter does at start); then ``scrapes`` full scrapes are timed as ``retrain exporter``
serves them (:meth:`Exporter.render`, no cache: each reads the store and writes the text).
Target: ``scrape_ms_100_models`` (the median) < 50. On a shared machine the wall time
follows the load: ``scrape_cpu_ms_exporter`` and ``scrape_cpu_ms_postgres`` (the CPU this
process and the database's backends spent, per scrape) say what a scrape costs. Also reported: the same scrape through
``prometheus_client.generate_latest``, a scrape served from the ``cache_s`` cache, and the
machine's floor (a transaction with ``SELECT 1``).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from retrain.benchmarks.decision import PG_ADMIN_URL, _bench_config, throwaway_database

__all__ = ["run"]


def _seed(ctx: Any, now: datetime, n_models: int, hours: int, rng: random.Random) -> int:
    """Seed through the repositories and the run lifecycle, as the steps write it."""
    from retrain.core import lifecycle
    from retrain.core.domain import Decision, RetrainRequest, RuleResult, TriggerKind, Verdict

    buckets = 0
    rules = tuple(RuleResult(rule=f"rule_{k}", passed=True) for k in range(12))
    with ctx.store.tx() as tx:
        for i in range(n_models):
            m = f"m{i}"
            tx.versions.add(model=m, version="1.0.0", major=1, minor=0, patch=0, status="production",
                            created_at=now - timedelta(days=10), deleted_at=None, artifact_sha256="0" * 64,
                            artifact_size=1, bump_kind="major", bump_reason="bench", parent_version=None,
                            data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=[],
                            params={}, git_commit=None, request_id=None, decision_id=None, run_id=None, cost_usd=0.0,
                            metrics={"baseline": {"accuracy": 0.6, "precision": 0.6, "recall": 0.6, "f1": 0.6,
                                                  "sharpe": 1.1}})
            tx.aliases.move(m, "production", "1.0.0", actor="bench", reason="seed", now=now - timedelta(days=10))
            rows = []
            for k in range(hours * 60):
                n = rng.randint(50, 150)
                tp = n // 3
                rows.append(dict(model=m, version="1.0.0", minute=now - timedelta(minutes=k + 1), n=n, tp=tp,
                                 fp=n // 5, tn=n - tp - n // 5 - n // 10, fn=n // 10, ret_sum=0.01 * n,
                                 ret_sq_sum=0.001 * n, unlabelled=5))
            tx.monitoring.add_buckets(rows)
            buckets += len(rows)
            report = {"features": [{"name": f"f{j}", "drifted": j == 0} for j in range(8)]}
            for h in range(3):
                tx.monitoring.add_drift_report(m, "1.0.0", now - timedelta(hours=h), False, report)
            for r in range(10):
                at = now - timedelta(hours=r * 5)
                rid, _ = tx.requests.open(RetrainRequest(id=f"{m}-req-{r}", model=m, trigger=TriggerKind.PERFORMANCE,
                                                         created_at=at, reason="bench", requested_by="bench"),
                                          exclusive=False)
                did = tx.decisions.add(Decision(request_id=rid, model=m, verdict=Verdict.APPROVE, decided_at=at,
                                                rules=rules), "performance", [x.to_json() for x in rules])
                run = lifecycle.new_run(tx, model=m, request_id=rid, decision_id=did, trigger="performance",
                                        priority=3, now=at)
                run = lifecycle.start_training(tx, run, owner="bench", now=at, lease_until=at)
                run = lifecycle.to_validating(tx, run, None, attempt=run.attempt, owner="bench")
                run = lifecycle.to_promotion(tx, run)
                lifecycle.complete(tx, run, at + timedelta(seconds=rng.randint(30, 900)))
        for k in range(1440):  # a day of ingested batches, one a minute
            tx.monitoring.claim_batch(f"b{k}", now - timedelta(minutes=k), 500, 1)
    return buckets


def _postgres_cpu_s(engine: Any) -> float | None:
    """CPU seconds the Postgres backends of this database have used (on this machine; None if unreadable)."""
    import os

    from sqlalchemy import text

    with engine.connect() as c:
        pids = c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars().all()
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def run(n_models: int = 100, scrapes: int = 30, hours: int = 6, seed: int = 0,
        admin_url: str = PG_ADMIN_URL) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, generate_latest
    from sqlalchemy import text

    from retrain.artifacts import ArtifactStore
    from retrain.context import Context
    from retrain.core.clock import SimClock
    from retrain.monitoring.exporter import Exporter
    from retrain.settings import Settings
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    with throwaway_database(admin_url) as url, tempfile.TemporaryDirectory(prefix="retrain-bench-") as tmp:
        settings = Settings(home=Path(tmp), database_url=url, broker_url="memory://",
                            artifact_root=Path(tmp) / "artifacts")
        ctx = Context(store=Store(Database(url)), config=_bench_config(n_models), clock=SimClock(now),
                      artifacts=ArtifactStore(Path(tmp) / "artifacts"), settings=settings, worker_id="bench")
        try:
            buckets = _seed(ctx, now, n_models, hours, random.Random(seed))
            with ctx.store.db.engine.begin() as c:  # fresh planner statistics, as autovacuum would keep them
                c.execute(text("ANALYZE"))
            exporter = Exporter(ctx)  # cache_s=0: every scrape reads the store and renders
            t = time.perf_counter()
            exporter.refresh()
            history_ms = (time.perf_counter() - t) * 1000
            timings, size, series = [], 0, 0
            # CPU spent by this process and by Postgres: what a scrape costs whatever else the machine runs.
            cpu0, pg0 = time.process_time(), _postgres_cpu_s(ctx.store.db.engine)
            for _ in range(scrapes):
                t = time.perf_counter()
                body = exporter.render()
                timings.append((time.perf_counter() - t) * 1000)
                size = len(body)
            cpu1, pg1 = time.process_time(), _postgres_cpu_s(ctx.store.db.engine)
            series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
            pg_ms = (pg1 - pg0) * 1000 / scrapes if pg0 is not None and pg1 is not None else None
            # The same scrape through prometheus_client's own exposition (the collector's families), for comparison.
            registry = CollectorRegistry(auto_describe=False)
            registry.register(exporter)
            generic = []
            for _ in range(max(3, scrapes // 5)):
                t = time.perf_counter()
                generate_latest(registry)
                generic.append((time.perf_counter() - t) * 1000)
            # What a second scraper within cache_s gets (a Prometheus pair): the rendered text of the first.
            exporter.cache_s = 60.0
            exporter.render()
            cached = []
            for _ in range(scrapes):
                t = time.perf_counter()
                exporter.render()
                cached.append((time.perf_counter() - t) * 1000)
            # The floor: one transaction with a SELECT 1 on the same machine (shared and noisy).
            floor = []
            for _ in range(scrapes):
                t = time.perf_counter()
                with ctx.store.tx() as tx:
                    tx.ping()
                floor.append((time.perf_counter() - t) * 1000)
        finally:
            ctx.store.db.engine.dispose()
    timings.sort()
    return {"scrape_ms_100_models": round(statistics.median(timings), 2),
            "scrape_ms_p95": round(timings[int(0.95 * (len(timings) - 1))], 2),
            "scrape_ms_prometheus_client_exposition": round(statistics.median(generic), 2),
            "scrape_ms_cached": round(statistics.median(cached), 3),
            "scrape_cpu_ms_exporter": round((cpu1 - cpu0) * 1000 / scrapes, 2),
            "scrape_cpu_ms_postgres": round(pg_ms, 2) if pg_ms is not None else None,
            "tx_select_1_ms": round(statistics.median(floor), 3),
            "history_count_ms": round(history_ms, 1), "models": n_models, "series": series,
            "body_bytes": size, "bucket_rows": buckets, "scrapes": scrapes}
