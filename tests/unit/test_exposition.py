"""The exporter's own text exposition reads back as ``prometheus_client`` writes the same families."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from retrain.monitoring.exporter import _Counter, _Gauge, exposition


def _families():
    live = _Gauge("retrain_model_metric", "Live metric\nover a window", labels=["model", "version", "metric"])
    live.add_metric(["direction", "1.0.0", "accuracy"], 0.61)
    live.add_metric(['we"ird\\name\nx', "1.1.0", "sharpe"], float("nan"))
    live.add_metric(["direction", "1.1.0", "f1"], float("inf"))
    rollbacks = _Counter("retrain_rollbacks", "Rollbacks", labels=["model", "cause"])
    rollbacks.add_metric(["direction", "emergency"], 2.0)
    rows = _Counter("retrain_ingest_rows", "Rows ingest accepted")
    rows.add_metric([], 1e21)
    empty = _Gauge("retrain_spend_usd", "Spend", labels=["model", "period"])
    hist = HistogramMetricFamily("retrain_run_duration_seconds", "Durations",
                                 buckets=[("10.0", 1.0), ("60.0", 3.0), ("+Inf", 4.0)], sum_value=321.5)
    return [live, rollbacks, rows, empty, hist]


def _read(text: str):
    return sorted(((f.name, f.type, f.documentation), sorted((s.name, sorted(s.labels.items()), repr(s.value))
                                                             for s in f.samples))
                  for f in text_string_to_metric_families(text))


def test_the_exposition_reads_back_as_prometheus_clients():
    # Given the exporter's families, written by prometheus_client and by the exporter's own writer
    class Families:
        def collect(self):
            return [f.to_metric() if hasattr(f, "to_metric") else f for f in _families()]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    theirs = generate_latest(registry).decode()
    ours = exposition(_families()).decode()
    # Then both parse to the same families, types, help texts, samples, labels (escaped) and values
    assert _read(ours) == _read(theirs)
    assert 'model="we\\"ird\\\\name\\nx"' in ours and "retrain_rollbacks_total counter" in ours
