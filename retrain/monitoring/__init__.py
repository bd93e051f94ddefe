"""Seeing and hearing the system: the Prometheus exporter, notifications, JSON logs.

* :mod:`retrain.monitoring.events`: the audit hook that puts a notification in the outbox
  (which events, and the ``[notify]`` section, are pure: :mod:`retrain.core.notices`).
* :mod:`retrain.monitoring.notify`: the notification steps (delivery through apprise,
  riding the transactional outbox, retried with backoff).
* :mod:`retrain.monitoring.exporter`: ``retrain exporter``, metrics read from the database.
* :mod:`retrain.monitoring.logs`: ``RETRAIN_LOG_FORMAT=json``.
"""
