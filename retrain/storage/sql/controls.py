"""Models as configured, administrative switches, leases and node resource readings."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from retrain.core.errors import UnknownModelError
from retrain.core.records import ModelRecord
from retrain.storage.models import ControlRow, ModelRow
from retrain.storage.sql.base import SqlRepository, maybe, rowcount, table

__all__ = ["SqlModels", "SqlControls", "floor_key"]


def floor_key(model: str) -> str:
    # controls.key holds 64 characters; a model name may have 128.
    key = f"floor:{model}"
    return key if len(key) <= 64 else "floor:#" + hashlib.sha256(model.encode()).hexdigest()[:57]


class SqlModels(SqlRepository):
    def ensure(self, name: str, description: str, config: dict[str, Any], fingerprint: str, now: datetime) -> bool:
        """Register a model from configuration, or record that its configuration changed. True if new."""
        row = self.s.get(ModelRow, name)
        if row is None:
            self.s.add(ModelRow(name=name, description=description, created_at=now, deployed_at=None,
                                paused=False, config=config, config_fingerprint=fingerprint))
            self.tx.audit.record(now, "config", "system", f"model {name} registered from configuration", model=name,
                                 data={"fingerprint": fingerprint})
            return True
        if row.config_fingerprint != fingerprint:
            self.tx.audit.record(now, "config", "system", f"configuration of {name} changed", model=name,
                                 data={"from": row.config_fingerprint, "to": fingerprint})
            row.config, row.config_fingerprint, row.description = config, fingerprint, description
        return False

    def get(self, name: str) -> ModelRecord | None:
        return maybe(self.s.get(ModelRow, name), ModelRecord)

    def names(self) -> list[str]:
        return list(self.s.scalars(select(ModelRow.name).order_by(ModelRow.name)))

    def set_paused(self, model: str | None, paused: bool, actor: str, reason: str, now: datetime) -> None:
        """Pause or resume automatic retraining of one model (None: of all), audited."""
        if model is None:
            self.tx.controls.set("pause_all", {"paused": paused, "reason": reason}, actor, now)
        else:
            row = self.s.get(ModelRow, model)
            if row is None:
                known = ", ".join(self.names()) or "none"
                raise UnknownModelError(f"unknown model {model!r}; configured: {known}")
            row.paused = paused
        what = "paused" if paused else "resumed"
        self.tx.audit.record(now, "admin", actor, f"automatic retraining {what} for {model or 'all models'}: {reason}",
                             model=model)

    def set_deployed(self, name: str, at: datetime) -> None:
        """When the model's first production version went live."""
        row = self.s.get(ModelRow, name)
        if row is not None:
            row.deployed_at = at


class SqlControls(SqlRepository):
    def lock(self, name: str) -> None:
        """On SQLite a write takes the database lock for the rest of the transaction."""
        self.s.execute(
            self._insert(table(ControlRow))
            .values(key=f"lock:{name}", value={}, updated_at=datetime(2000, 1, 1).astimezone(), updated_by="lock")
            .on_conflict_do_update(index_elements=["key"], set_={"updated_by": "lock"})
        )

    def set(self, key: str, value: dict[str, Any], actor: str, now: datetime) -> None:
        row = self.s.get(ControlRow, key)
        if row is None:
            self.s.add(ControlRow(key=key, value=value, updated_at=now, updated_by=actor))
        else:
            row.value, row.updated_at, row.updated_by = value, now, actor

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.s.get(ControlRow, key)
        return row.value if row else None

    def report_resources(self, node: str, reading: dict[str, Any], now: datetime) -> None:
        """A training node's free memory, CPU load and free disk, for the decision's resource rule."""
        self.set(f"resources:{node}", {**reading, "at": now.isoformat()}, node, now)

    def set_floor_clock(self, model: str, since: datetime | None, now: datetime) -> None:
        """Start (``since``) or stop (None) the time a model is known to be below its accuracy floor.

        The decision writes it only when that changes; a run started or ended after
        ``since`` makes the decision's snapshot ignore it.
        """
        self.set(floor_key(model), {"model": model, "since": since.isoformat() if since else None}, "policy", now)

    def hold_lease(self, name: str, holder: str, now: datetime, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder``; False while another holder's lease runs.

        The lease lives in ``controls`` (key ``lease:NAME``): ``updated_by`` is the holder and
        ``updated_at`` the last renewal, so it expires ``ttl_s`` after it; one conditional
        UPDATE decides between two contenders on either backend.
        """
        key = f"lease:{name}"
        self.s.execute(self._insert(table(ControlRow))
                       .values(key=key, value={}, updated_at=now - timedelta(seconds=2 * ttl_s), updated_by="")
                       .on_conflict_do_nothing(index_elements=["key"]))
        c = ControlRow
        res = self.s.execute(update(c).where(c.key == key, or_(c.updated_by == holder,
                                                               c.updated_at < now - timedelta(seconds=ttl_s)))
                             .values(updated_at=now, updated_by=holder, value={"holder": holder, "ttl_s": ttl_s})
                             .execution_options(synchronize_session=False))
        return rowcount(res) == 1

    def release_lease(self, name: str, holder: str) -> None:
        c = ControlRow
        self.s.execute(update(c).where(c.key == f"lease:{name}", c.updated_by == holder)
                       .values(updated_by="", value={}, updated_at=datetime(2000, 1, 1).astimezone())
                       .execution_options(synchronize_session=False))
