"""What the live model produced: ingested batches, metric buckets, feature samples, drift
reports and the scheduled slots already fired."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, cast, delete, func, select

from retrain.core.records import DriftReportRecord, FeatureSample, MetricBucket
from retrain.storage.models import DriftReportRow, FeatureSampleRow, IngestedBatchRow, MetricBucketRow, ScheduleSlotRow
from retrain.storage.sql.base import SqlRepository, maybe, rowcount, table, to_record

__all__ = ["SqlMonitoring", "RATE_BUCKETS"]

#: How many of a model's newest metric buckets the decision reads its traffic from.
RATE_BUCKETS = 1440


class SqlMonitoring(SqlRepository):
    # ----------------------------------------------------------------- ingest
    def claim_batch(self, batch_id: str, now: datetime, accepted: int, rejected: int) -> bool:
        """Record a batch id; False if it was seen before (a redelivery)."""
        res = self.s.execute(
            self._insert(table(IngestedBatchRow))
            .values(batch_id=batch_id, received_at=now, accepted=accepted, rejected=rejected)
            .on_conflict_do_nothing(index_elements=["batch_id"])
        )
        return rowcount(res) == 1

    def ingested(self) -> tuple[int, int]:
        """(batches recorded, labelled results in all metric buckets): what survived, all models."""
        batches = self.s.scalar(select(func.count()).select_from(IngestedBatchRow)) or 0
        return int(batches), self.labelled_total()

    def labelled_total(self) -> int:
        return int(self.s.scalar(select(func.coalesce(func.sum(MetricBucketRow.n), 0))) or 0)

    def add_buckets(self, rows: list[dict[str, Any]]) -> None:
        """Add counts to (model, version, minute) buckets, creating the ones that do not exist."""
        if not rows:
            return
        t = table(MetricBucketRow)
        ins = self._insert(t)
        cols = ("n", "tp", "fp", "tn", "fn", "ret_sum", "ret_sq_sum", "unlabelled")
        stmt = ins.on_conflict_do_update(
            index_elements=["model", "version", "minute"],
            set_={c: getattr(t.c, c) + getattr(ins.excluded, c) for c in cols},
        )
        self.s.execute(stmt, rows)

    def add_samples(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.s.execute(table(FeatureSampleRow).insert(), rows)

    # ----------------------------------------------------------------- reads
    def buckets(self, model: str, version: str | None, since: datetime,
                until: datetime | None = None) -> list[MetricBucket]:
        q = select(MetricBucketRow).where(MetricBucketRow.model == model, MetricBucketRow.minute >= since)
        if version is not None:
            q = q.where(MetricBucketRow.version == version)
        if until is not None:
            q = q.where(MetricBucketRow.minute < until)
        return [to_record(r, MetricBucket) for r in self.s.scalars(q.order_by(MetricBucketRow.minute))]

    def latest_minute(self, model: str) -> datetime | None:
        """The newest minute with a metric bucket of the model, any version."""
        return self.s.scalar(select(func.max(MetricBucketRow.minute)).where(MetricBucketRow.model == model))

    def samples(self, model: str, since: datetime | None = None, until: datetime | None = None,
                labelled: bool = True, limit: int | None = None) -> list[FeatureSample]:
        q = select(FeatureSampleRow).where(FeatureSampleRow.model == model)
        if since is not None:
            q = q.where(FeatureSampleRow.ts >= since)
        if until is not None:
            q = q.where(FeatureSampleRow.ts < until)
        if labelled:
            q = q.where(FeatureSampleRow.label.is_not(None))
        q = q.order_by(FeatureSampleRow.ts, FeatureSampleRow.id)
        if limit:
            q = q.limit(limit)
        return [to_record(r, FeatureSample) for r in self.s.scalars(q)]

    def prune_samples(self, model: str, keep: int) -> int:
        """Delete all but the newest ``keep`` sample rows of a model; returns how many went."""
        cutoff = self.s.scalar(
            select(FeatureSampleRow.id).where(FeatureSampleRow.model == model)
            .order_by(FeatureSampleRow.id.desc()).offset(keep).limit(1)
        )
        if cutoff is None:
            return 0
        res = self.s.execute(delete(FeatureSampleRow).where(FeatureSampleRow.model == model,
                                                            FeatureSampleRow.id <= cutoff))
        return rowcount(res)

    def traffic_since(self, model: str, since: datetime, version: str | None = None) -> tuple[int, int, int]:
        """(labelled results, correct ones, unlabelled predictions) in the metric buckets since ``since``."""
        b = MetricBucketRow
        q = select(func.coalesce(func.sum(b.n), 0), func.coalesce(func.sum(b.tp + b.tn), 0),
                   func.coalesce(func.sum(b.unlabelled), 0)).where(b.model == model, b.minute >= since)
        if version is not None:
            q = q.where(b.version == version)
        n, correct, unlabelled = self.s.execute(q).one()
        return int(n), int(correct), int(unlabelled)

    def served(self, model: str, since: datetime, until: datetime) -> tuple[int, int, datetime | None, datetime | None]:
        """(predictions served, labelled or not; distinct minutes; first and last minute) in the newest
        ``RATE_BUCKETS`` metric buckets between ``since`` and ``until``: what
        :func:`retrain.core.policy.serving_rate` reads."""
        b = MetricBucketRow
        newest = (select(b.minute.label("minute"), (b.n + b.unlabelled).label("served"))
                  .where(b.model == model, b.minute >= since, b.minute <= until)
                  .order_by(b.minute.desc()).limit(RATE_BUCKETS).subquery("newest"))
        served, minutes, first, last = self.s.execute(select(
            func.coalesce(func.sum(newest.c.served), 0), func.count(func.distinct(newest.c.minute)),
            func.min(newest.c.minute), func.max(newest.c.minute))).one()
        return int(served), int(minutes), first, last

    def bucket_series(self, model: str, version: str, since: datetime,
                      until: datetime) -> list[tuple[float, ...]]:
        """(minute as epoch seconds, n, tp, fp, tn, fn, ret_sum, ret_sq_sum) of one version's buckets in
        [since, until), oldest first, all numbers: the sweep reads hundreds per model into one array."""
        b = MetricBucketRow
        if self.pg:
            epoch = cast(func.extract("epoch", b.minute), Float)
        else:  # stored as 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC
            epoch = cast(func.strftime("%s", b.minute), Float)
        q = (select(epoch, b.n, b.tp, b.fp, b.tn, b.fn, b.ret_sum, b.ret_sq_sum)
             .where(b.model == model, b.version == version, b.minute >= since, b.minute < until)
             .order_by(b.minute))
        return [tuple(r) for r in self.s.execute(q)]

    def sample_features(self, model: str, since: datetime, limit: int) -> list[list[float]]:
        """Features of the newest ``limit`` sample rows of a model at or after ``since``."""
        f = FeatureSampleRow
        q = select(f.features).where(f.model == model, f.ts >= since).order_by(f.id.desc()).limit(limit)
        return list(self.s.scalars(q))

    def shadow_rows(self, model: str, version: str, since: datetime, after_id: int,
                    limit: int) -> list[tuple[int, list[Any], int, int, float | None]]:
        """(id, features, label, prediction, return) of labelled sample rows served by ``version`` at or
        after ``since`` with an id above ``after_id``, in id order: what a shadow has not scored yet."""
        f = FeatureSampleRow
        q = (select(f.id, f.features, f.label, f.prediction, f.ret)
             .where(f.model == model, f.version == version, f.ts >= since, f.id > after_id, f.label.is_not(None))
             .order_by(f.id).limit(limit))
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self.s.execute(q)]

    # ----------------------------------------------------------------- drift reports
    def add_drift_report(self, model: str, version: str | None, at: datetime, drifted: bool,
                         report: dict[str, Any]) -> None:
        self.s.add(DriftReportRow(model=model, version=version, at=at, drifted=drifted, report=report))

    def latest_drift_report(self, model: str) -> DriftReportRecord | None:
        return maybe(self.s.scalars(select(DriftReportRow).where(DriftReportRow.model == model)
                                    .order_by(DriftReportRow.id.desc()).limit(1)).first(), DriftReportRecord)

    def drift_reports(self, model: str) -> list[DriftReportRecord]:
        """Every stored drift report of a model, oldest first."""
        q = select(DriftReportRow).where(DriftReportRow.model == model).order_by(DriftReportRow.at, DriftReportRow.id)
        return [to_record(r, DriftReportRecord) for r in self.s.scalars(q)]

    def last_drift_check(self, model: str) -> datetime | None:
        return self.s.scalar(select(func.max(DriftReportRow.at)).where(DriftReportRow.model == model))

    # ----------------------------------------------------------------- schedules
    def claim_schedule_slot(self, model: str, slot: str, now: datetime) -> bool:
        """True the first time a (model, scheduled slot) is claimed; a second beat gets False."""
        res = self.s.execute(self._insert(table(ScheduleSlotRow))
                             .values(model=model, slot=slot, fired_at=now, request_id=None)
                             .on_conflict_do_nothing(index_elements=["model", "slot"]))
        return rowcount(res) == 1

    def schedule_slots(self, model: str | None = None) -> list[str]:
        """The scheduled slots fired so far (of a model), sorted."""
        q = select(ScheduleSlotRow.slot)
        if model is not None:
            q = q.where(ScheduleSlotRow.model == model)
        return sorted(self.s.scalars(q))
