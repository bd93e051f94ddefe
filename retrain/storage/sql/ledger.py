"""The append-only cost ledger: reservations, their releases, and measured costs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from retrain.core.records import CostEntry
from retrain.storage.models import CostRow
from retrain.storage.sql.base import SqlRepository, table, to_record

__all__ = ["SqlLedger"]


class SqlLedger(SqlRepository):
    def add(self, run_id: str, model: str, kind: str, amount: float, at: datetime,
            detail: dict[str, Any] | None = None) -> None:
        """Append a ledger row. A run's release and actual rows are booked to the day and month
        of its reservation (``at`` keeps when they happened): the reservation *becomes* the
        actual cost in the period whose budget admitted it, so a run that finishes after
        midnight neither leaves yesterday overstated nor today negative."""
        day, month = at.strftime("%Y-%m-%d"), at.strftime("%Y-%m")
        if kind in ("release", "actual"):
            booked = self.reservation_period(run_id)
            if booked is not None:
                day, month = booked
        self.s.add(CostRow(run_id=run_id, model=model, kind=kind, amount_usd=float(amount), at=at,
                           day=day, month=month, detail=detail or {}))

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Ledger rows with every column given (a benchmark's or an import's bulk load)."""
        if rows:
            self.s.flush()
            self.s.execute(table(CostRow).insert(), rows)

    def spend(self, *, day: str | None = None, month: str | None = None, model: str | None = None) -> float:
        q = select(func.coalesce(func.sum(CostRow.amount_usd), 0.0))
        if day:
            q = q.where(CostRow.day == day)
        if month:
            q = q.where(CostRow.month == month)
        if model:
            q = q.where(CostRow.model == model)
        return float(self.s.scalar(q) or 0.0)

    def held_reservation(self, run_id: str) -> float:
        """What a run still holds in reservations (reservations plus their releases)."""
        q = select(func.coalesce(func.sum(CostRow.amount_usd), 0.0)).where(
            CostRow.run_id == run_id, CostRow.kind.in_(("reservation", "release")))
        return float(self.s.scalar(q) or 0.0)

    def entries(self, since_month: str | None = None, *, run_id: str | None = None) -> list[CostEntry]:
        """Ledger rows (since a month, of a run) in the order they were written."""
        q = select(CostRow)
        if since_month:
            q = q.where(CostRow.month >= since_month)
        if run_id:
            q = q.where(CostRow.run_id == run_id)
        return [to_record(r, CostEntry) for r in self.s.scalars(q.order_by(CostRow.at, CostRow.id))]

    def actual_costs(self, model: str, limit: int = 10) -> list[float]:
        """The model's last ``limit`` measured run costs from the ledger, oldest first (the estimate's input)."""
        q = (select(CostRow.amount_usd).where(CostRow.model == model, CostRow.kind == "actual")
             .order_by(CostRow.id.desc()).limit(limit))
        return [float(v) for v in reversed(self.s.scalars(q).all())]

    def reservation_period(self, run_id: str) -> tuple[str, str] | None:
        """(day, month) the run's reservation was booked to, if it has one."""
        row = self.s.execute(select(CostRow.day, CostRow.month).where(
            CostRow.run_id == run_id, CostRow.kind == "reservation").order_by(CostRow.id).limit(1)).first()
        return (row[0], row[1]) if row else None

    def totals(self, since_month: str) -> list[tuple[str, str, str, float, int]]:
        """(day, model, kind, sum, rows) of the ledger since the start of ``since_month``."""
        c = CostRow
        q = (select(c.day, c.model, c.kind, func.sum(c.amount_usd), func.count()).where(c.month >= since_month)
             .group_by(c.day, c.model, c.kind).order_by(c.day, c.model, c.kind))
        return [(d, m, k, float(v or 0.0), int(n)) for d, m, k, v, n in self.s.execute(q)]
