"""``retrain exporter`` scraped by a real Prometheus server (Debian's ``prometheus``), queried through its HTTP API.

A scripted story on Postgres through the real steps (ingest, a production collapse the sweep
answers with an emergency request and a rollback to ``previous``, the decision that approves
the retraining and queues its run); then ``retrain exporter`` in its own process, Prometheus
scraping it every second, and PromQL through ``/api/v1/query`` until the story's figures appear.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.config import load_config
from retrain.core.clock import SimClock
from retrain.core.payloads import IngestBatch, parse_payload
from retrain.core.policy import ResourceReading
from retrain.steps.decide import decide_request
from retrain.steps.ingest import ingest
from retrain.steps.requests import sync_models
from retrain.steps.sweep import sweep
from tests.conftest import _unavailable, free_port, make_context
from tests.procs import Proc, retrain_env, wait_for
from tests.rollout_world import FEATURES, MODEL, add_version, aliases, make_production

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOM = ResourceReading(free_memory_mb=100_000, cpu_load_pct=0, free_disk_mb=1_000_000)

# The rollout tests' model (tests/rollout_world.config) as a model file, which the exporter's process reads too.
MODEL_FILE = f"""
[policy]
approval_days = 0

[models.{MODEL}]
entry_point = "retrain.examples.direction:train"
data_source = "sample"
features = {json.dumps(FEATURES)}
sample = {{ rate = 1.0, max_rows = 200000 }}
drift = {{ enabled = false }}
validation = {{ shadow_min_hours = 0.5, shadow_max_hours = 3, shadow_min_rows = 300 }}
rollout = {{ stage_min_minutes = 20, stage_min_samples = 100, stage_max_minutes = 180 }}
thresholds = {{ min_samples = 1000 }}
emergency = {{ enabled = true }}
"""


def _live(ctx, version: str, start: datetime, minutes: int, accuracy: float, seed: int) -> int:
    """Minute buckets of ``version`` at ``accuracy``, 60 outcomes a minute; returns the outcomes written."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(minutes):
        hits = int(rng.binomial(60, accuracy))
        tp = hits // 2
        rows.append({"model": MODEL, "version": version, "minute": start + timedelta(minutes=i), "n": 60, "tp": tp,
                     "tn": hits - tp, "fp": (60 - hits) // 2, "fn": 60 - hits - (60 - hits) // 2, "ret_sum": 0.0,
                     "ret_sq_sum": 0.0, "unlabelled": 0})
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets(rows)
    return 60 * minutes


def _story(ctx) -> dict[str, int]:
    """Production 1.1.0 collapses; the sweep rolls back to 1.0.0 and asks for a retraining, which is approved."""
    now = ctx.now()
    add_version(ctx, "1.0.0", "A")
    add_version(ctx, "1.1.0", "B")
    with ctx.store.tx() as tx:
        for version, level in (("1.0.0", 0.60), ("1.1.0", 0.62)):
            row = tx.versions.get(MODEL, version)
            tx.versions.update(row, metrics={**row.metrics, "baseline": {"accuracy": level}})
    make_production(ctx, "1.1.0")
    with ctx.store.tx() as tx:
        tx.aliases.move(MODEL, "previous", "1.0.0", actor="test", reason="given", now=now)
    outcomes = {"1.0.0": _live(ctx, "1.0.0", now - timedelta(hours=5), 120, 0.60, seed=0)}
    outcomes["1.1.0"] = _live(ctx, "1.1.0", now - timedelta(minutes=180), 165, 0.52, seed=1)
    outcomes["1.1.0"] += _live(ctx, "1.1.0", now - timedelta(minutes=15), 15, 0.10, seed=2)
    # Rows the client sends go through the real ingest step (30 labelled results of 1.1.0, a minute ago)
    n, t = 30, (now - timedelta(minutes=1)).timestamp()
    batch = {"v": 1, "batch_id": uuid.uuid4().hex, "model": MODEL, "id": [f"p{i}" for i in range(n)],
             "version": ["1.1.0"] * n, "ts": [t + i for i in range(n)], "x": [[0.1] * len(FEATURES)] * n,
             "prediction": [1] * n, "label": [i % 2 for i in range(n)], "ret": [0.001] * n}
    ingest(ctx, parse_payload(IngestBatch, batch))
    outcomes["ingested"] = n
    # The sweep: a CRITICAL emergency on 1.1.0, production back to 1.0.0
    result = sweep(ctx)
    assert [(r["from"], r["to"], r["by"]) for r in result.rollbacks] == [("1.1.0", "1.0.0", "emergency")]
    assert aliases(ctx)["production"][0] == "1.0.0"
    # The decision: the emergency's retraining is approved and its run queued
    with ctx.store.tx() as tx:
        [req] = [r for r in tx.requests.newest(MODEL) if r.trigger == "emergency"]
    assert decide_request(ctx, req.id, ROOM).verdict == "approve"
    return outcomes


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(port: int, promql: str) -> float | None:
    result = _query(port, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_the_story_from_the_exporter(pg_url, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        _unavailable("prometheus (Debian's `prometheus` package)", FileNotFoundError("prometheus"))
    # Given a story on Postgres, on a clock at the wall's minute (the exporter's process reads the wall clock)
    model_file = tmp_path / "retrain.toml"
    model_file.write_text(MODEL_FILE)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    ctx = make_context(pg_url, tmp_path, config=load_config(model_file), clock=SimClock(now))
    sync_models(ctx)
    outcomes = _story(ctx)
    ctx.store.db.engine.dispose()
    # And `retrain exporter` in its own process, and Prometheus scraping it every second
    exporter_port, prom_port = free_port(), free_port()
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_CONFIG=str(model_file), RETRAIN_HOME=str(tmp_path / "home"),
                      RETRAIN_BROKER_URL="memory://", RETRAIN_LOG_FORMAT="json")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: retrain\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n")
    procs: list[Proc] = []
    try:
        procs.append(Proc("exporter", [sys.executable, "-c",
                                       "import sys; from retrain.cli import main; sys.exit(main())",
                                       "exporter", "--port", str(exporter_port), "--addr", "127.0.0.1"],
                          env, tmp_path))
        wait_for("the exporter's /metrics", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{exporter_port}/metrics", timeout=2).status == 200, 20, procs)
        procs.append(Proc("prometheus", [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                         f"--web.listen-address=127.0.0.1:{prom_port}"], env, tmp_path))
        m = f'model="{MODEL}"'
        # When Prometheus has scraped the exporter
        wait_for("Prometheus to scrape the exporter", lambda: _value(prom_port, 'up{job="retrain"}') == 1.0, 30, procs)
        # Then PromQL returns the story: the rollback and its cause, production back to 1.0.0
        expected = {
            f'retrain_rollbacks_total{{{m},cause="emergency"}}': 1.0,
            f'retrain_production_version_info{{{m},version="1.0.0"}}': 1.0,
            f'count(retrain_production_version_info{{{m}}})': 1.0,
            # the outcomes counted per version (the ingested rows among 1.1.0's)
            f'retrain_model_outcomes_total{{{m},version="1.0.0"}}': float(outcomes["1.0.0"]),
            f'retrain_model_outcomes_total{{{m},version="1.1.0"}}': float(outcomes["1.1.0"] + outcomes["ingested"]),
            "retrain_ingest_rows_total": float(outcomes["ingested"]),
            # the emergency request, the decision that approved it, the run it queued
            f'retrain_trigger_firings_total{{{m},kind="emergency"}}': 1.0,
            f'retrain_decisions_total{{{m},verdict="approve"}}': 1.0,
            f'retrain_runs{{{m},state="queued"}}': 1.0,
            f'retrain_pending_approvals{{{m}}}': 0.0,
            f'retrain_rollout_stage_percent{{{m}}}': 0.0,
            'retrain_training_slots{state="busy"}': 0.0,
        }
        got: dict[str, float | None] = {}

        def all_there() -> bool:
            got.update({q: _value(prom_port, q) for q in expected})
            return got == expected

        try:
            wait_for("the story's values in Prometheus", all_there, 30, procs)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nexpected {expected}\ngot      {got}") from None
        # And the live metrics: 1.1.0's collapse is in its 5-minute window, far below its 240-minute level
        short = _value(prom_port, f'retrain_model_metric{{{m},version="1.1.0",metric="accuracy",window="5m"}}')
        long = _value(prom_port, f'retrain_model_metric{{{m},version="1.1.0",metric="accuracy",window="240m"}}')
        assert short is not None and long is not None and short < 0.3 < long, (short, long)
        assert _value(prom_port, f'retrain_model_baseline{{{m},version="1.0.0",metric="accuracy"}}') == 0.60
        assert _value(prom_port, f'retrain_label_lag_seconds{{{m}}}') is not None
        # And the exporter reports how long its scrape took
        assert (_value(prom_port, "retrain_exporter_scrape_seconds") or 0) > 0
    finally:
        for p in reversed(procs):
            p.stop(timeout=10)
