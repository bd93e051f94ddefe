"""What a retraining costs (ADAPT-013): measure it, price it, estimate the next one.

* :class:`ResourceMeter` measures a training in the worker: CPU seconds of the
  process and its children, peak RSS (sampled by a small background thread),
  and wall seconds on :func:`retrain.core.clock.monotonic`.
* :func:`price` turns a :class:`ResourceUsage` into a :class:`CostBreakdown`
  with configurable :class:`CostRates`: compute + memory + time + opportunity.
* :func:`estimate_cost` predicts the next run's cost from past measured ones
  (an exponential moving average), which the decision checks against the budgets.
* :func:`read_resources` reads the node's free memory, CPU load and free disk for
  the decision's resource rule. It is the only function here that reads the
  machine's state outside a meter; everything else is pure arithmetic.

Opportunity cost
----------------
While a degraded model waits for its replacement, every prediction it serves
is worse than the retrained one would be. The part of that loss caused by the
training itself is the training's wall time::

    opportunity_usd = accuracy_gap_points x predictions_per_second x wall_seconds
                      x rates.value_per_accuracy_point_usd

with the value per accuracy point per prediction that the decision's value
model (:mod:`retrain.core.policy`) uses for outcomes without returns, so that a slow
training is charged for the accuracy it keeps the desk without. (When outcomes
carry returns the decision values a correct prediction from them and the
notional instead; this charge keeps the configured figure.)

Example
-------
>>> usage = ResourceUsage(cpu_seconds=3600.0, peak_rss_mb=1024.0, wall_seconds=1800.0)
>>> b = price(usage, CostRates(), Opportunity(accuracy_gap_points=2.0, predictions_per_second=5000.0))
>>> round(b.total_usd, 4) == round(b.compute_usd + b.memory_usd + b.time_usd + b.opportunity_usd, 4)
True
>>> estimate_cost([], default_usd=2.0)
2.0
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from retrain.core.clock import monotonic
from retrain.core.policy import ResourceReading

__all__ = [
    "CostRates",
    "ResourceUsage",
    "Opportunity",
    "CostBreakdown",
    "ResourceMeter",
    "price",
    "estimate_cost",
    "read_resources",
]

_MB = 1024.0 * 1024.0
_CHILDREN_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class CostRates:
    """Prices, in USD; defaults are of the order of a small cloud VM and meant to be configured.

    ``usd_per_slot_hour`` charges the wall time a training occupies one of the
    1-3 training slots, whether or not it keeps the CPU busy.
    ``value_per_accuracy_point_usd`` is what one accuracy point is worth on one
    prediction, the same figure as ``Policy.value_per_accuracy_point_usd`` (the
    decision's value of a correct prediction, / 100, when outcomes carry no returns).
    """

    usd_per_cpu_second: float = 0.04 / 3600.0
    usd_per_gb_hour: float = 0.005
    usd_per_slot_hour: float = 0.10
    value_per_accuracy_point_usd: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("usd_per_cpu_second", "usd_per_gb_hour", "usd_per_slot_hour", "value_per_accuracy_point_usd"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"CostRates.{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What one training used: CPU seconds (user + system, children included), peak RSS, wall time."""

    cpu_seconds: float
    peak_rss_mb: float
    wall_seconds: float
    samples: int = 0


@dataclass(frozen=True, slots=True)
class Opportunity:
    """The degraded model's situation during training, for the opportunity cost."""

    accuracy_gap_points: float
    predictions_per_second: float


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """One training's cost by kind, in USD; ``total_usd`` is their sum."""

    compute_usd: float
    memory_usd: float
    time_usd: float
    opportunity_usd: float
    total_usd: float

    def to_json(self) -> dict[str, float]:
        return {
            "compute_usd": self.compute_usd,
            "memory_usd": self.memory_usd,
            "time_usd": self.time_usd,
            "opportunity_usd": self.opportunity_usd,
            "total_usd": self.total_usd,
        }


def price(usage: ResourceUsage, rates: CostRates, opportunity: Opportunity | None = None) -> CostBreakdown:
    """Price a measured training; pure.

    Memory is charged as if the peak were held for the whole run: that is what
    the node had to keep free for it.
    """
    hours = usage.wall_seconds / 3600.0
    compute = usage.cpu_seconds * rates.usd_per_cpu_second
    memory = (usage.peak_rss_mb / 1024.0) * hours * rates.usd_per_gb_hour
    time_cost = hours * rates.usd_per_slot_hour
    opp = 0.0
    if opportunity is not None:
        opp = (max(0.0, opportunity.accuracy_gap_points) * max(0.0, opportunity.predictions_per_second)
               * usage.wall_seconds * rates.value_per_accuracy_point_usd)
    return CostBreakdown(compute, memory, time_cost, opp, compute + memory + time_cost + opp)


def estimate_cost(past_costs: Sequence[float], default_usd: float, alpha: float = 0.3) -> float:
    """Exponential moving average of past measured costs, oldest first; ``default_usd`` if none.

    Non-finite and negative entries are skipped rather than raised on: one bad
    row in the cost table must not stop every later decision.

    >>> round(estimate_cost([1.0, 2.0, 4.0], default_usd=9.0, alpha=0.5), 3)
    2.75
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    ema: float | None = None
    for c in past_costs:
        if not math.isfinite(c) or c < 0:
            continue
        ema = c if ema is None else alpha * c + (1.0 - alpha) * ema
    return default_usd if ema is None else ema


class ResourceMeter:
    """Measure the block it wraps: CPU seconds, peak RSS and wall seconds of a process tree.

    CPU time is read at entry and exit (the process's own user+system, its
    reaped children's, and its live children's), so the figure covers
    training code that forks workers. Peak RSS is the largest sum of the
    tree's resident sets seen by a daemon thread sampling every
    ``interval_s``; it keeps only the running maximum, so its memory is
    bounded however long the training runs. A spike shorter than the
    interval can be missed; entry and exit are always sampled. The list of
    children is refreshed about once a second, not at every sample: listing
    them scans ``/proc``, and each of those reads waits for the GIL behind a
    training loop that holds it, which would stretch 50 ms to hundreds.

    >>> with ResourceMeter() as m:
    ...     _ = sum(range(10_000))
    >>> m.usage.peak_rss_mb > 0
    True
    """

    def __init__(
        self,
        pid: int | None = None,
        interval_s: float = 0.05,
        include_children: bool = True,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._proc = psutil.Process(pid if pid is not None else os.getpid())
        self._interval = interval_s
        self._children = include_children
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._samples = 0
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._usage: ResourceUsage | None = None
        self._procs: list[psutil.Process] = [self._proc]
        self._refresh_every = max(1, round(_CHILDREN_REFRESH_S / interval_s))
        self._until_refresh = 0

    @property
    def usage(self) -> ResourceUsage:
        """The measurement; available once the block has exited."""
        if self._usage is None:
            raise RuntimeError("ResourceMeter.usage is only available after the with-block exits")
        return self._usage

    def _tree(self) -> list[psutil.Process]:
        if not self._children:
            return [self._proc]
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return [self._proc]

    def _cpu(self) -> float:
        total = 0.0
        for i, p in enumerate(self._tree()):
            try:
                t = p.cpu_times()
            except psutil.Error:  # a child that exited between listing and reading
                continue
            total += t.user + t.system
            if i == 0 and self._children:
                total += t.children_user + t.children_system
        return total

    def _sample(self) -> None:
        if self._until_refresh <= 0:
            self._procs = self._tree()
            self._until_refresh = self._refresh_every
        self._until_refresh -= 1
        rss = 0
        for p in self._procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        if rss > self._peak:
            self._peak = rss
        self._samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> ResourceMeter:
        self._usage = None
        self._peak = 0
        self._samples = 0
        self._until_refresh = 0
        self._stop.clear()
        self._sample()
        self._cpu0 = self._cpu()
        self._t0 = self._clock()
        self._thread = threading.Thread(target=self._run, name="retrain-resource-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        wall = self._clock() - self._t0
        cpu = self._cpu() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 10 * self._interval))
            self._thread = None
        self._until_refresh = 0  # catch children started since the last refresh
        self._sample()
        self._usage = ResourceUsage(
            cpu_seconds=max(0.0, cpu), peak_rss_mb=self._peak / _MB, wall_seconds=max(0.0, wall),
            samples=self._samples,
        )


def read_resources(artifact_root: str | os.PathLike[str]) -> ResourceReading:
    """Free memory and disk, and CPU load, of this node; the decision's resource input.

    CPU load is the 1-minute load average over the number of CPUs, in percent
    (it can exceed 100): unlike ``cpu_percent(interval=None)`` it needs no
    earlier call to mean something. Disk is read on the artifact store's
    filesystem; when the root does not exist yet, on its nearest existing parent.
    """
    path = Path(artifact_root).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    load1 = psutil.getloadavg()[0]
    cpus = psutil.cpu_count() or 1
    return ResourceReading(
        free_memory_mb=psutil.virtual_memory().available / _MB,
        cpu_load_pct=100.0 * load1 / cpus,
        free_disk_mb=psutil.disk_usage(str(path)).free / _MB,
    )
