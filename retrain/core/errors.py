"""The errors ``retrain`` raises, as one tree.

::

    RetrainError
    ├── ConfigError            bad settings or model file (permanent, at start-up)
    ├── PayloadError           a message or record that does not fit its schema (permanent)
    │   ├── UnknownModelError      a model name that is not configured
    │   ├── VersionUnavailableError a version that does not exist or was deleted
    │   └── VersionProtectedError  deleting a version that is still needed
    ├── SchemaOutdatedError    the database is behind the code's migrations (permanent)
    ├── ArtifactError          an artifact is missing or does not match its sha256 (permanent)
    ├── StaleLeaseError        a write by a run that no longer holds its lease (permanent)
    ├── TransitionError        a run move its lifecycle does not allow (a bug, permanent)
    ├── TrainingError          the model's own training code failed (permanent for that attempt)
    └── TransientError         worth retrying: a service is briefly unreachable
        ├── StoreUnavailableError  the database did not answer
        ├── BrokerUnavailableError the message broker did not answer
        └── RelayBusyError         the client's relay process has not taken the last batch yet

Permanent errors go to the dead-letter table with their reason; transient
ones are retried by Celery.
"""

from __future__ import annotations

__all__ = [
    "RetrainError",
    "ConfigError",
    "PayloadError",
    "UnknownModelError",
    "VersionUnavailableError",
    "VersionProtectedError",
    "SchemaOutdatedError",
    "ArtifactError",
    "StaleLeaseError",
    "TransitionError",
    "TrainingError",
    "TransientError",
    "StoreUnavailableError",
    "BrokerUnavailableError",
    "RelayBusyError",
]


class RetrainError(Exception):
    """Raised when anything in retrain fails; the root of the tree."""


class ConfigError(RetrainError):
    """Raised when settings or the model file are invalid; the message names the field."""


class PayloadError(RetrainError):
    """Raised when a message or a record does not fit its schema."""


class UnknownModelError(PayloadError):
    """Raised when a payload or a command names a model that is not configured; names the configured ones."""


class VersionUnavailableError(PayloadError):
    """Raised when a version named for a rollback, an alias move or a load does not exist or was deleted."""


class VersionProtectedError(PayloadError):
    """Raised when deleting a version that an alias, the rollback target or a running rollout still needs."""


class SchemaOutdatedError(RetrainError):
    """Raised when the database schema is older than the code; says how to upgrade."""


class ArtifactError(RetrainError):
    """Raised when an artifact is missing or its bytes do not match its sha256."""


class StaleLeaseError(RetrainError):
    """Raised when a run's effect is written by an attempt that lost its lease."""


class TransitionError(RetrainError):
    """Raised when a run is asked to make a move its lifecycle does not allow."""


class TrainingError(RetrainError):
    """Raised when a model's training entry point fails or returns nothing usable."""


class TransientError(RetrainError):
    """Raised when a failure is expected to pass: retry later."""


class StoreUnavailableError(TransientError):
    """Raised when the database cannot be reached."""


class BrokerUnavailableError(TransientError):
    """Raised when the message broker cannot be reached."""


class RelayBusyError(TransientError):
    """Raised when the client's relay process has not taken the previous message yet: the client keeps the batch."""
