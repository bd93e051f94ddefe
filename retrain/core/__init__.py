"""The pure core: the decision policy, triggers, drift, rollout statistics, the run lifecycle,
the task table, the store's interface (ports, records) and the payloads.

No module here does I/O of its own (no database, no broker, no files), imports Celery or
reads the wall clock (time comes from :mod:`retrain.core.clock`); each is unit-tested directly.
``tests/unit/test_layering.py`` checks what it may import.
"""
