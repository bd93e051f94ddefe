"""The metrics exporter's reads: grouped aggregates over all models, a few statements each.

:meth:`SqlExporter.totals` counts what was written in a time range (every table it reads
has an index on the time column, migration 0007), so the exporter counts the history once
and then only what is new. :meth:`SqlExporter.gauges` reads the current state; its biggest
statement is the live windows of the metric buckets, one index range per model.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime
from functools import reduce
from typing import Any

from sqlalchemy import case, func, select

from retrain.core.records import MonitoringGauges, MonitoringTotals
from retrain.storage.models import (
    AliasRow,
    AuditRow,
    ControlRow,
    CostRow,
    DeadLetterRow,
    DecisionRow,
    DriftReportRow,
    IngestedBatchRow,
    MetricBucketRow,
    OutboxRow,
    RequestRow,
    RunRow,
    TrainingSlotRow,
    VersionRow,
)
from retrain.storage.sql.base import SqlRepository

__all__ = ["SqlExporter"]


def _between(col: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    out = []
    if since is not None:
        out.append(col >= since)
    if until is not None:
        out.append(col < until)
    return out


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


class SqlExporter(SqlRepository):
    """Column reads only (no row objects): they run on the session's connection, in its transaction, without the
    ORM's per-statement work (a scrape runs a dozen of them)."""

    def _run(self, stmt: Any) -> Any:
        return self.s.connection().execute(stmt)

    def _scalar(self, stmt: Any) -> Any:
        return self.s.connection().execute(stmt).scalar()

    def totals(self, since: datetime | None, until: datetime | None, *, buckets: bool = True) -> MonitoringTotals:
        b = MetricBucketRow
        bucket_rows = self._run(
            select(b.model, b.version, func.sum(b.n), func.sum(b.n + b.unlabelled), func.max(b.minute),
                   func.max(case((b.n > 0, b.minute), else_=None)))
            .where(*_between(b.minute, since, until)).group_by(b.model, b.version)).all() if buckets else []
        r = RequestRow
        firings = self._run(
            select(r.model, r.trigger, func.coalesce(r.severity, ""), func.count())
            .where(*_between(r.created_at, since, until)).group_by(r.model, r.trigger, r.severity)).all()
        d = DecisionRow
        decisions = self._run(select(d.model, d.verdict, d.rules)
                                   .where(*_between(d.decided_at, since, until))).all()
        dl = DeadLetterRow
        dead = self._run(select(dl.source, dl.reason, dl.model, func.count())
                              .where(*_between(dl.at, since, until)).group_by(dl.source, dl.reason, dl.model)).all()
        ib = IngestedBatchRow
        acc, rej = self._run(
            select(func.coalesce(func.sum(ib.accepted), 0), func.coalesce(func.sum(ib.rejected), 0))
            .where(*_between(ib.received_at, since, until))).one()
        a = AuditRow
        audit = self._run(select(a.model, a.kind, a.actor, a.message, a.data)
                               .where(a.kind.in_(("rollback", "client")), *_between(a.at, since, until))
                               .order_by(a.id)).all()
        return MonitoringTotals(
            buckets=[(m, v, int(n or 0), int(p or 0)) for m, v, n, p, _, _ in bucket_rows],
            newest=[(m, v, last, labelled) for m, v, _, _, last, labelled in bucket_rows],
            firings=[(m, t, s, int(c)) for m, t, s, c in firings],
            decisions=[(m, v, list(rules or [])) for m, v, rules in decisions],
            dead_letters=[(src, reason, model, int(c)) for src, reason, model, c in dead],
            ingest_accepted=int(acc), ingest_rejected=int(rej),
            rollbacks=[(m, actor, msg, dict(data or {})) for m, kind, actor, msg, data in audit if kind == "rollback"],
            client_dropped=sum(int((data or {}).get("dropped") or 0) for _, kind, _, _, data in audit
                               if kind == "client"),
        )

    def minutes(self, models: Sequence[str], since: datetime, until: datetime) -> list[tuple[Any, ...]]:
        b = MetricBucketRow
        if not models:
            return []
        return [tuple(r) for r in self._run(
            select(b.model, b.version, b.minute, b.n, b.tp, b.fp, b.tn, b.fn, b.ret_sum, b.ret_sq_sum)
            .where(b.model.in_(list(models)), b.minute >= since, b.minute < until)
            .order_by(b.model, b.version, b.minute))]

    def gauges(self, now: datetime, models: Sequence[str], window_starts: Sequence[datetime], slot_limit: int, *,
               counted_since: datetime | None = None,
               duration_buckets: Sequence[float] = ()) -> MonitoringGauges:
        b = MetricBucketRow
        windows: list[tuple[str, str, datetime, int, int, int, int, int, float, float]] = []
        fresh: list[tuple[str, str, int, int, int, int, int, float, float, int]] = []
        newest: list[tuple[str, str, datetime | None, datetime | None]] = []
        bounds = sorted(set(window_starts) | ({counted_since} if counted_since is not None else set()))
        if models and bounds:
            # One scan from the earliest bound, grouped by band (how many bounds a minute is at or after): a
            # window's sums, and the counts since ``counted_since``, add up the bands at or after their bound.
            band = reduce(operator.add, [case((b.minute >= at, 1), else_=0) for at in bounds]).label("band")
            rows = self._run(
                select(b.model, b.version, band, func.sum(b.n), func.sum(b.tp), func.sum(b.fp), func.sum(b.tn),
                       func.sum(b.fn), func.sum(b.ret_sum), func.sum(b.ret_sq_sum), func.sum(b.unlabelled),
                       func.max(b.minute), func.max(case((b.n > 0, b.minute), else_=None)))
                .where(b.model.in_(list(models)), b.minute >= bounds[0])
                .group_by(b.model, b.version, band)).all()
            bands: dict[tuple[str, str], dict[int, tuple[Any, ...]]] = {}
            for model, version, k, *sums in rows:
                bands.setdefault((model, version), {})[int(k)] = tuple(sums)
            starts = set(window_starts)
            for (model, version), by_band in bands.items():
                acc: list[Any] = [0, 0, 0, 0, 0, 0.0, 0.0, 0]
                last: datetime | None = None
                labelled: datetime | None = None
                for k in range(len(bounds), 0, -1):  # the latest bound first; each earlier one adds a band
                    got = by_band.get(k)
                    if got is not None:
                        for j in range(8):
                            acc[j] += got[j] or 0
                        last, labelled = _later(last, got[8]), _later(labelled, got[9])
                    at = bounds[k - 1]
                    if at in starts and acc[0]:
                        n, tp, fp, tn, fn, rs, rq, _ = acc
                        windows.append((model, version, at, int(n), int(tp), int(fp), int(tn), int(fn),
                                        float(rs), float(rq)))
                    if at == counted_since:
                        n, tp, fp, tn, fn, rs, rq, unlabelled = acc
                        fresh.append((model, version, int(n), int(tp), int(fp), int(tn), int(fn), float(rs), float(rq),
                                      int(unlabelled)))
                        newest.append((model, version, last, labelled))
        dr = DriftReportRow
        newest_report = select(func.max(dr.id)).group_by(dr.model).scalar_subquery()
        drift = [(m, v, at, dict(rep or {})) for m, v, at, rep in
                 self._run(select(dr.model, dr.version, dr.at, dr.report).where(dr.id.in_(newest_report)))]
        r = RequestRow
        pending = [(m, int(c)) for m, c in self._run(
            select(r.model, func.count()).where(r.status == "pending_approval").group_by(r.model))]
        run = RunRow
        runs = [(m, st, int(c)) for m, st, c in self._run(
            select(run.model, run.state, func.count()).group_by(run.model, run.state))]
        # The histogram of run durations, counted by the database: (le, runs at most that long), sum, count.
        seconds = (func.extract("epoch", run.finished_at - run.started_at) if self.pg
                   else (func.julianday(run.finished_at) - func.julianday(run.started_at)) * 86400.0)
        finished = (run.started_at.is_not(None), run.finished_at.is_not(None))
        hist = self._run(select(func.count(), func.coalesce(func.sum(seconds), 0.0),
                                     *[func.sum(case((seconds <= le, 1), else_=0)) for le in duration_buckets])
                              .where(*finished)).one()
        durations = [(float(le), int(c or 0)) for le, c in zip(duration_buckets, hist[2:], strict=True)]
        ts = TrainingSlotRow
        busy = self._scalar(select(func.count()).select_from(ts).where(
            ts.slot < slot_limit, ts.run_id.is_not(None), ts.lease_expires_at >= now)) or 0
        pending_out = self._scalar(select(func.count()).select_from(OutboxRow)
                                    .where(OutboxRow.published_at.is_(None))) or 0
        c = CostRow
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        spend_rows = self._run(
            select(c.model, func.sum(case((c.day == day, c.amount_usd), else_=0.0)), func.sum(c.amount_usd))
            .where(c.month == month).group_by(c.model)).all()
        spend = [(m, "day", float(dsum or 0.0)) for m, dsum, _ in spend_rows]
        spend += [(m, "month", float(msum or 0.0)) for m, _, msum in spend_rows]
        al, v = AliasRow, VersionRow
        production = [(m, ver, dict(metrics or {})) for m, ver, metrics in self._run(
            select(al.model, al.version, v.metrics).join(v, (v.model == al.model) & (v.version == al.version))
            .where(al.alias == "production", al.version.is_not(None))) if ver is not None]
        canaries = [(m, ver, float(share)) for m, ver, share in self._run(
            select(al.model, al.version, al.share_pct).where(al.alias == "canary", al.version.is_not(None)))
            if ver is not None]
        cr = ControlRow
        leases = [(key.removeprefix("lease:"), at) for key, at in self._run(
            select(cr.key, cr.updated_at).where(cr.key.like("lease:%"), cr.updated_by != ""))]
        return MonitoringGauges(windows=windows, drift=drift, pending_approvals=pending, runs=runs,
                                run_duration_buckets=durations, run_duration_sum=float(hist[1] or 0.0),
                                run_duration_count=int(hist[0] or 0), buckets_since=fresh, newest_since=newest,
                                slots_busy=int(busy), outbox_pending=int(pending_out), spend=spend,
                                production=production, canaries=canaries, leases=leases)
