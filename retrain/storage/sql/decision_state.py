"""The decision's read model: everything it needs about one model and the world, in two statements."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, case, cast, func, literal, or_, select

from retrain.core.records import DecisionState
from retrain.storage.models import AliasRow, ControlRow, CostRow, MetricBucketRow, ModelRow, RunRow, VersionRow
from retrain.storage.sql.base import SqlRepository
from retrain.storage.sql.controls import floor_key
from retrain.storage.sql.monitoring import RATE_BUCKETS
from retrain.storage.sql.runs import ACTIVE_RUN_STATES

__all__ = ["SqlDecisionState"]



class SqlDecisionState(SqlRepository):
    def snapshot(self, model: str, *, now: datetime, history: timedelta, window: timedelta,
                          report_max_age: timedelta, rate_window: timedelta = timedelta(days=30)
                          ) -> DecisionState:
        """Everything the decision reads about one model and the world, in two statements.

        Traffic is read from the model's newest ``RATE_BUCKETS`` metric buckets (all
        versions, labelled or not) within ``rate_window``: a day of a busy model, a
        month of a daily one. The floor clock (:meth:`SqlControls.set_floor_clock`) counts only
        when it started after the model's last run began or ended.

        The statements are built once per process (``_decision_sql``) with bind
        parameters, so a decision pays neither for building nor for compiling
        them; the decision step runs under its lock, so every round trip saved
        is throughput across all workers.
        """
        one, many = _decision_sql()
        midnight = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo)
        params = {"model": model, "since": now - history, "midnight": midnight, "rate_since": now - rate_window,
                  "now": now, "floor_key": floor_key(model),
                  "window": now - window, "day": now.strftime("%Y-%m-%d"), "month": now.strftime("%Y-%m"),
                  "reports": now - report_max_age}
        r = self.s.execute(one, params).one()
        starts: list[datetime] = []
        active: str | None = None
        costs: list[float] = []
        reports: list[dict] = []
        for tag, key, at, state, amount, value in self.s.execute(many, params):
            if tag == "run":
                if state == "cancelled":
                    continue
                if at >= params["since"]:
                    starts.append(at)
                if active is None and state in ACTIVE_RUN_STATES:
                    active = key
            elif tag == "cost":
                costs.append(float(amount))
            elif value is not None:
                reports.append({**(value if isinstance(value, dict) else {}), "node": key.partition(":")[2]})
        costs.reverse()  # newest first from the query; the estimate wants oldest first
        baseline = ((r.production_metrics or {}).get("baseline") or {}).get("accuracy")
        clock = (r.floor_clock or {}).get("since")
        below_since = datetime.fromisoformat(clock) if isinstance(clock, str) else None
        if below_since is not None and r.last_run_at is not None and below_since <= r.last_run_at:
            below_since = None  # a retraining since: the clock starts again at the next finding
        return DecisionState(
            paused=bool(r.paused), deployed_at=r.deployed_at, known_model=r.known_model is not None,
            globally_paused=bool((r.pause_all or {}).get("paused", False)), production=r.production,
            production_baseline=baseline, runs_today=int(r.runs_today or 0),
            spend_today=float(r.spend_today), spend_month=float(r.spend_month),
            model_spend_today=float(r.model_spend_today), model_spend_month=float(r.model_spend_month),
            served=int(r.rate_served), served_minutes=int(r.rate_minutes), served_first=r.rate_first,
            served_last=r.rate_last, returns_n=int(r.ret_n), returns_sq_sum=float(r.ret_sq),
            below_floor_since=below_since, window_n=int(r.win_n),
            window_correct=int(r.win_correct), run_starts=starts, active_run=active, actual_costs=costs,
            resource_reports=reports)


@cache
def _decision_sql() -> tuple[Any, Any]:
    """The decision's two reads, built once per process: one row of scalars and aggregates, and the lists."""
    from sqlalchemy import Float, String, bindparam, null, true, union_all

    model = bindparam("model", type_=String)
    since = bindparam("since", type_=RunRow.created_at.type)
    midnight = bindparam("midnight", type_=RunRow.created_at.type)
    minute_t = MetricBucketRow.minute.type
    rate_since, window, now = (bindparam("rate_since", type_=minute_t), bindparam("window", type_=minute_t),
                               bindparam("now", type_=minute_t))
    day, month = bindparam("day", type_=String), bindparam("month", type_=String)
    zero = literal(0.0)
    c, b = CostRow, MetricBucketRow
    prod_alias = (select(AliasRow.version).where(AliasRow.model == model, AliasRow.alias == "production")
                  .scalar_subquery())
    in_day, is_model = c.day == day, c.model == model
    spend = select(
        func.coalesce(func.sum(case((in_day, c.amount_usd), else_=zero)), zero).label("spend_today"),
        func.coalesce(func.sum(c.amount_usd), zero).label("spend_month"),
        func.coalesce(func.sum(case((and_(in_day, is_model), c.amount_usd), else_=zero)), zero)
        .label("model_spend_today"),
        func.coalesce(func.sum(case((is_model, c.amount_usd), else_=zero)), zero).label("model_spend_month"),
    ).where(c.month == month).subquery("spend")
    newest = (select(b.minute.label("minute"), (b.n + b.unlabelled).label("served"), b.n.label("labelled"),
                     b.ret_sq_sum.label("ret_sq"))
              .where(b.model == model, b.minute >= rate_since, b.minute <= now)
              .order_by(b.minute.desc()).limit(RATE_BUCKETS).subquery("newest"))
    traffic_rate = select(func.coalesce(func.sum(newest.c.served), 0).label("rate_served"),
                          func.count(func.distinct(newest.c.minute)).label("rate_minutes"),
                          func.min(newest.c.minute).label("rate_first"), func.max(newest.c.minute).label("rate_last"),
                          func.coalesce(func.sum(newest.c.labelled), 0).label("ret_n"),
                          func.coalesce(func.sum(newest.c.ret_sq), zero).label("ret_sq")).subquery("traffic_rate")
    # The floor clock and what resets it: a run's start or end (a cancelled run retrained nothing).
    floor_clock = (select(ControlRow.value).where(ControlRow.key == bindparam("floor_key", type_=String))
                   .scalar_subquery())
    last_run = (select(func.max(func.coalesce(RunRow.finished_at, RunRow.created_at)))
                .where(RunRow.model == model, RunRow.created_at >= since, RunRow.state != "cancelled")
                .scalar_subquery())
    traffic_win = select(func.coalesce(func.sum(b.n), 0).label("win_n"),
                         func.coalesce(func.sum(b.tp + b.tn), 0).label("win_correct")
                         ).where(b.model == model, b.version == prod_alias, b.minute >= window, b.minute <= now
                                 ).subquery("traffic_win")
    one = select(
        select(ModelRow.name).where(ModelRow.name == model).scalar_subquery().label("known_model"),
        select(ModelRow.paused).where(ModelRow.name == model).scalar_subquery().label("paused"),
        select(ModelRow.deployed_at).where(ModelRow.name == model).scalar_subquery().label("deployed_at"),
        select(ControlRow.value).where(ControlRow.key == "pause_all").scalar_subquery().label("pause_all"),
        prod_alias.label("production"),
        select(VersionRow.metrics).where(VersionRow.model == model, VersionRow.version == prod_alias)
        .scalar_subquery().label("production_metrics"),
        select(func.count()).select_from(RunRow).where(RunRow.created_at >= midnight, RunRow.state != "cancelled")
        .scalar_subquery().label("runs_today"),
        spend.c.spend_today, spend.c.spend_month, spend.c.model_spend_today, spend.c.model_spend_month,
        traffic_rate.c.rate_served, traffic_rate.c.rate_minutes, traffic_rate.c.rate_first,
        traffic_rate.c.rate_last, traffic_rate.c.ret_n, traffic_rate.c.ret_sq,
        traffic_win.c.win_n, traffic_win.c.win_correct, floor_clock.label("floor_clock"),
        last_run.label("last_run_at"),
    ).select_from(spend.join(traffic_rate, true()).join(traffic_win, true()))
    runs = select(literal("run").label("tag"), RunRow.id.label("key"), RunRow.created_at.label("at"),
                  RunRow.state.label("state"), cast(null(), Float).label("amount"),
                  cast(null(), ControlRow.value.type).label("value")
                  ).where(RunRow.model == model, or_(RunRow.created_at >= since, RunRow.state.in_(ACTIVE_RUN_STATES)))
    last_costs = (select(c.id, c.run_id, c.at, c.amount_usd).where(c.model == model, c.kind == "actual")
                  .order_by(c.id.desc()).limit(10).subquery("last_costs"))
    costs = select(literal("cost"), last_costs.c.run_id, last_costs.c.at, literal("actual"),
                   last_costs.c.amount_usd, cast(null(), ControlRow.value.type))
    reports = select(literal("res"), ControlRow.key, ControlRow.updated_at, literal(""), cast(null(), Float),
                     ControlRow.value).where(
        ControlRow.key.startswith("resources:"),
        ControlRow.updated_at >= bindparam("reports", type_=ControlRow.updated_at.type))
    many = union_all(runs, costs, reports)
    return one, many
