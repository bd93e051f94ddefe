"""Benchmarks that need real Celery workers and services; each module has run() -> dict."""
