"""Fault-injection tests: real celery workers, a private redis-server and Postgres,
each fault bounded in time (see harness.py and README 'Fault tests')."""
