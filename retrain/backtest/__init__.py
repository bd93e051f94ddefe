"""Backtest: replay a labelled history through the real policy, and compare it with fixed schedules.

``retrain backtest DATA --time COL --label COL [--return COL] ... --out DIR`` answers the
operator's question before automation is turned on: on my history, what would this
policy have done, how many retrainings, at what cost, and how much accuracy would it
have kept? It answers with the code that runs in production: the rows are replayed on
a :class:`~retrain.core.clock.SimClock` through the workers' own steps (ingest, sweep with
the four triggers, decide, train with the model's entry point, validate, shadow and
staged rollout, promote, rollback), drained in-process from the outbox by
:func:`retrain.steps.dispatch.drain`, each policy in its own throwaway SQLite
database. See :mod:`retrain.backtest.replay` for the loop, :mod:`.policies` for what
``auto``, ``never`` and ``every:<duration>`` are, :mod:`.source` for the no-look-ahead
data source.

No look-ahead: a row's label (and return) reaches ingest, and the training data, only
``--label-delay`` after its time; the model that predicts a row was trained before the
row's time; the first model trains at the end of ``--warmup``.

From Python::

    from retrain.backtest import run_comparison
    report, text = run_comparison("history.csv", time="time", label="label", ret="ret",
                                  policies=("auto", "never", "every:1d"), label_delay="1m", out="bt")
    print(text)

report.json (schema_version 1)
------------------------------
Keys are stable; new keys may be added, none is renamed or removed within a schema
version. Times are ISO 8601 UTC strings; money is USD; accuracies are fractions.

Top level:

``schema_version`` (int), ``partial`` (bool: Ctrl-C or SIGTERM stopped the run; figures cover what
was replayed), ``policies_requested`` (list of labels, the primary first), ``data``
(``source``, ``rows``, ``skipped_rows``, ``features``, ``start``, ``end``,
``rows_per_minute``, ``has_return``, ``columns``), ``settings`` (``model``, ``config``,
``label_delay``, ``warmup``, ``warmup_end``, ``period``, ``sweep_every``,
``approve_after``, ``widened``: one sentence per window of the model file widened for a
slow stream), ``model_config`` (the effective model settings, decision policy and
cost rates of the primary policy), ``data_drift`` (list of ``{start, end, drifted,
share_drifted, drifted_features, mean_statistic, max_statistic, rows}``: the data after
the warm-up against the warm-up rows, the same for every policy), ``elapsed_s``, then
**every key of the primary policy's object** (below), and ``policies``: an object
mapping each policy label (``auto``, ``never``, ``every:1d``, ...) to its object, in the
order asked for (one entry without ``--compare``). Labels are as the user wrote them
(``every:7d`` stays ``every:7d``); two spellings of one period are one policy, the first kept.

A policy's object:

=====================  ====================================================================
key                    meaning
=====================  ====================================================================
policy                 its label: ``auto``, ``never`` or ``every:<duration>`` as written
partial                true when this policy's replay was interrupted
replayed_until         simulated time the replay reached
rows                   rows in the data
predictions            predictions counted in ``accuracy`` (after the warm-up)
accuracy               mean accuracy over every prediction after the warm-up (null if none)
accuracy_by_period     list of ``{start, end, accuracy, n}`` per ``--period`` (default 1 day)
sharpe                 per-prediction Sharpe ratio of the strategy (long on 1, short on 0),
                       mean / standard deviation, not annualised; null without ``--return``
baselines              trivial predictors scored on the same predictions: ``majority`` (the
                       class most frequent among the warm-up's labels known at its end) and,
                       with ``--return``, ``always_up``; each ``{label, predicts, accuracy,
                       sharpe}``
skill                  accuracy minus the best baseline's (null without predictions): at or
                       below 0, the model shows no skill on this data
retrainings            trainings after the initial one
trainings              every training started, the initial one included
promotions             versions that became production
rollbacks              versions rolled back (a canary withdrawn, or production restored)
cost_usd               sum of the cost ledger's ``actual`` rows: measured CPU and memory of
                       every training, priced as in production (retrain.steps.train)
triggers               requests opened per trigger kind: ``emergency``, ``performance``,
                       ``drift``, ``manual``, ``schedule`` (zeros included)
approvals              requests the simulated operator approved (first-week gate)
decisions              list of ``{time, trigger, verdict, reasons, request, defer_until,
                       resolved_by}``; ``reasons`` are the rules that stood in the way
                       (``rule: detail``), or ``all rules passed (bypassed: ...)``
versions               list of ``{version, trained_at, promoted_at, rejected, rolled_back,
                       rolled_back_at, status, trigger, cost_usd, holdout_accuracy,
                       data_rows, data_end, validation}``; ``promoted_at`` is null for a
                       version never promoted, ``rejected`` true when validation or shadow
                       turned it down or its rollout ended inconclusive
drift                  the sweep's drift checks: ``{time, version, drifted, share_drifted,
                       drifted_features, mean_statistic, max_statistic, rows}``
timeline               accuracy per plot bin: ``{start, end, accuracy, n}``
timeline_width_s       width of those bins, seconds
elapsed_s              wall time of the replay (not part of the result: differs run to run)
notes                  sentences: each setting that cannot act at the data's rate (a trigger
                       whose window never holds its minimum sample, a holdout too small for the
                       improvement asked, a shadow or canary stage that cannot gather its rows
                       in time, and then whether walk-forward judges the candidates instead...),
                       with the field and a value that fits, from the settings
                       the replay ran with; what the results show (every request turned down,
                       and by which rules; retrainings never promoted, and why; no skill);
                       anything the replay had to skip
=====================  ====================================================================

Only ``cost_usd``, the versions' ``cost_usd`` and ``elapsed_s`` depend on the machine
(measured CPU and memory); everything else is the same for the same input and settings.

report.html is one self-contained page (plots as data URIs) with ``accuracy.png``,
``cost.png`` and ``drift.png`` beside it.
"""

from retrain.backtest.data import ReplayData, from_arrays, load_data, market_data, write_csv
from retrain.backtest.durations import format_duration, parse_duration
from retrain.backtest.policies import PolicySpec, parse_policies, parse_policy
from retrain.backtest.run import (
           SCHEMA_VERSION,
           BacktestSettings,
           run_backtest,
           run_comparison,
           summary_text,
           write_report,
)

__all__ = ["ReplayData", "from_arrays", "load_data", "market_data", "write_csv", "format_duration", "parse_duration",
           "PolicySpec", "parse_policies", "parse_policy", "SCHEMA_VERSION", "BacktestSettings", "run_backtest",
           "run_comparison", "summary_text", "write_report"]
