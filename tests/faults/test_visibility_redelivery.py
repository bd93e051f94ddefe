"""Fault 2: a training longer than a (deliberately too short) Redis visibility timeout.

Proves: when Redis hands a still-running training to a second worker, the lease in
Postgres decides. The second delivery finds the run held under a live lease and
does nothing; the first worker finishes; one lease holder, one fit, one version.
(celeryconfig refuses such a visibility timeout unless told it is a test.)

The fit runs until the test releases it, after the second worker has received the
message and let it go: a fit of fixed length would race the second worker's start-up,
which takes many seconds on a loaded machine (the fit would end, its message would be
acknowledged, and there would be nothing left to redeliver). The lease is long enough
that a loaded machine cannot make it lapse between two renewals: what expires here is
Redis's visibility timeout, not the lease. The reconciler does not resend the queued run
either (a worker slow to start would look like a lost message), so the second worker's copy
is Redis's redelivery of the first worker's message, and the test checks it is that message.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    HELD,
    RedisServer,
    audit,
    fault_env,
    publish_outbox,
    queue_runs,
    runs,
    stop_all,
    store_for,
    versions,
    write_model_file,
)
from tests.faults.slow_model import fit_intervals
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

VISIBILITY_TIMEOUT_S = 2


def test_a_redelivered_running_training_has_one_lease_holder_and_one_version(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log, release = tmp_path / "fits.log", tmp_path / "release-the-fit"
    config = write_model_file(tmp_path / "models.toml",
                              {"slow": {"entry_point": HELD, "params": {"log": str(log), "release": str(release)}}})
    env = fault_env(pg_url, redis.url, tmp_path, config, visibility_timeout_s=VISIBILITY_TIMEOUT_S,
                    allow_short_visibility_timeout=1, lease_s=60, requeue_after_s=600)
    first = start_worker("train1", "training", env, tmp_path, pool="prefork")
    procs = [first, start_worker("ops", "monitoring,decision,validation,promotion", env, tmp_path),
             start_beat(env, tmp_path)]
    store = store_for(pg_url)
    holders: set[str] = set()

    def run_now():
        run = runs(store, [rid])[0]
        if run.lease_owner:
            holders.add(run.lease_owner)
        return run

    try:
        # Given a training running on the first worker for longer than the visibility timeout
        (rid,) = queue_runs(store, [("slow", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the fit to start", lambda: log.exists() and "start" in log.read_text() and run_now(), 180, procs)
        task_id = wait_for("the first worker's delivery", lambda: _received(first.log()), 60, procs)[0]
        wait_for("the delivery to outlive the visibility timeout",
                 lambda: run_now() and _unacked_for(redis, task_id) > VISIBILITY_TIMEOUT_S + 0.5, 60, procs)
        # When a second worker starts, and Redis hands it the unacknowledged message
        second = start_worker("train2", "training", env, tmp_path, pool="prefork")
        procs.append(second)
        wait_for("the redelivery to reach the second worker",
                 lambda: run_now() and task_id in _received(second.log()), 240, procs)
        # Then the second delivery did nothing while the fit ran
        wait_for("the second delivery to be skipped",
                 lambda: run_now() and _skipped(second.log(), task_id), 120, procs)
        assert run_now().state == "training" and "end" not in log.read_text()
        # And once the first worker's fit ends, the run ends: one lease holder, one attempt, one fit
        release.touch()
        run = wait_for("the run to end", lambda: (r := run_now()).state in FINAL_RUN and r, 180, procs)
        assert run.state == "done" and run.attempt == 1, (run.state, run.attempt, run.error)
        assert len(holders) == 1, holders
        assert len(fit_intervals(log)) == 1 and log.read_text().count("start") == 1
        # And one version
        assert versions(store, "slow") == ["1.0.0"]
        assert sum("training of slow started" in m for m in audit(store, "slow")) == 1
    finally:
        release.touch()
        stop_all(procs)
        redis.stop()


def _received(worker_log: str) -> list[str]:
    """The ids of the retrain.train messages a worker received, in order."""
    return re.findall(r"Task retrain\.train\[([0-9a-f-]+)\] received", worker_log)


def _skipped(worker_log: str, task_id: str) -> bool:
    """Whether the worker ran the message ``task_id`` and its training step skipped it (a live lease)."""
    return any(f"retrain.train[{task_id}] succeeded" in line and "'status': 'skipped'" in line and "held by" in line
               for line in worker_log.splitlines())


def _unacked_for(redis: RedisServer, task_id: str) -> float:
    """Seconds since the message ``task_id`` was delivered, while it is unacknowledged (kombu's
    ``unacked`` hash holds the message by delivery tag, ``unacked_index`` the delivery time); 0 otherwise."""
    client = redis.client()
    for tag, raw in client.hgetall("unacked").items():
        if task_id in raw.decode("utf-8", "replace"):
            delivered = client.zscore("unacked_index", tag)
            return time.time() - delivered if delivered is not None else 0.0
    return 0.0
