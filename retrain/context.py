"""What every step needs, in one object: the store, the model file, the clock, the artifacts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from retrain.artifacts import ArtifactStore
from retrain.config import RetrainConfig
from retrain.core.clock import Clock
from retrain.settings import Settings
from retrain.storage.repo import Store

if TYPE_CHECKING:
    from retrain.core.policy import ResourceReading

__all__ = ["Context", "ProcessCache", "CacheSlot"]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class CacheSlot(Generic[T]):
    """One typed entry of a :class:`ProcessCache`; a module defines its slots once, as constants."""

    name: str


class ProcessCache:
    """A process's memos (the policy objects, loaded estimators, drift references...), one typed
    slot each: never shared across processes, never persisted."""

    def __init__(self) -> None:
        self._slots: dict[CacheSlot[Any], Any] = {}

    def slot(self, slot: CacheSlot[T], build: Callable[[], T]) -> T:
        """The slot's value, built by ``build()`` the first time."""
        try:
            return self._slots[slot]
        except KeyError:
            value = self._slots[slot] = build()
            return value

    def clear(self) -> None:
        self._slots.clear()


@dataclass
class Context:
    store: Store
    config: RetrainConfig
    clock: Clock
    artifacts: ArtifactStore
    settings: Settings
    worker_id: str = "local"
    # Per-process memos, one typed slot each (see ProcessCache); never shared across processes.
    cache: ProcessCache = field(default_factory=ProcessCache)
    # Reads this node's free memory, CPU and disk for the decision (retrain.core.costs.read_resources
    # on workers). None: no local reading, as in the backtester, whose simulated decisions must
    # not depend on the load of the machine replaying them.
    resources: Callable[[], ResourceReading | None] | None = None

    def now(self):
        return self.clock.now()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock, worker_id: str,
                      config: RetrainConfig | None = None) -> Context:
        """The context of a process: its database, model file and artifact store from ``settings``."""
        from retrain.config import load_config
        from retrain.monitoring.events import enqueue_notice
        from retrain.storage.db import Database

        settings.ensure_home()
        assert settings.artifact_root is not None  # ensure_home fills it in
        # Every audited event worth a message puts its notification in the outbox of its transaction.
        return cls(store=Store(Database(settings.database_url), on_audit=enqueue_notice),
                   config=config if config is not None else load_config(settings.config_path()), clock=clock,
                   artifacts=ArtifactStore(settings.artifact_root, file_mode=settings.artifact_file_mode,
                                           dir_mode=settings.artifact_dir_mode),
                   settings=settings, worker_id=worker_id)
