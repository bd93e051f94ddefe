"""Celery adapters for the retrain core: the app, the runtime and thin tasks per queue."""
