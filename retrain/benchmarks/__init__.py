"""Benchmarks of the core: each module measures one thing and returns its figures as a dict.

Benchmarks may read ``time.perf_counter_ns`` directly; nothing else in ``retrain/`` does.
"""

__all__: list[str] = []
