"""The registry under concurrency and crashes, against real Postgres.

Several threads and processes, each with its own engine, register versions and move
aliases at once; a training process is killed in the middle of registering its
version. Numbers stay unique, every alias keeps one consistent target, nothing
half-registered becomes visible, and garbage collection removes what the crash left.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import tomllib
from datetime import datetime, timedelta, timezone

import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.errors import PayloadError
from retrain.core.versioning import VersionSpec, fingerprint_json
from retrain.registry import NewVersion, move_alias, register_version, rollback
from retrain.steps.retention import run_retention
from retrain.storage.db import Database
from retrain.storage.repo import Store
from tests.conftest import EXAMPLE_CONFIG, ROOT, T0, make_context
from tests.runs import make_run

pytestmark = pytest.mark.timeout(120)

SPEC_ARGS = (("f0", "f1"), "retrain.examples.direction:train", fingerprint_json({"C": 1.0}))


def _register(store: Store, artifacts, model: str, tag: str) -> str:
    art = artifacts.put_bytes(f"model {tag}".encode())
    with store.tx() as tx:
        return register_version(tx, NewVersion(model=model, spec=VersionSpec(*SPEC_ARGS, fingerprint_json(tag)),
                                               artifact=art), now=T0, actor=tag, artifacts=artifacts).version


def _first_in_production(ctx, model: str = "m") -> None:
    v = _register(ctx.store, ctx.artifacts, model, "first")
    with ctx.store.tx() as tx:
        move_alias(tx, model, "production", v, actor="test", reason="first", now=T0)


def _expected(n: int) -> list[str]:
    return [f"1.{i}.0" for i in range(n + 1)]


def _all_versions(ctx, model: str = "m") -> list[str]:
    with ctx.store.tx() as tx:
        return [v.version for v in tx.versions.all(model)]


def test_concurrent_registrations_in_threads_never_share_a_number(pg_url, tmp_path):
    # Given 1.0.0 in production, and 8 threads each with its own engine
    ctx = make_context(pg_url, tmp_path)
    _first_in_production(ctx)
    n_threads, per_thread = 8, 3
    barrier = threading.Barrier(n_threads)
    got: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        store = Store(Database(pg_url))
        try:
            barrier.wait(timeout=30)
            for j in range(per_thread):
                v = _register(store, ctx.artifacts, "m", f"t{i}-{j}")
                with lock:
                    got.append(v)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.db.dispose()

    # When they all register versions at once
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then every registration succeeded with its own number, and the numbers leave no gap
    assert errors == []
    assert len(got) == len(set(got)) == n_threads * per_thread
    assert sorted(_all_versions(ctx), key=lambda s: tuple(map(int, s.split(".")))) == _expected(n_threads * per_thread)


_PROCESS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from retrain.artifacts import ArtifactStore
    from retrain.storage.db import Database
    from retrain.storage.repo import Store
    from tests.integration.test_registry_concurrency import _register

    url, root, tag, n, ready, go = sys.argv[1:7]
    store, artifacts = Store(Database(url)), ArtifactStore(Path(root))
    Path(ready).touch()
    for _ in range(3000):
        if Path(go).exists():
            break
        time.sleep(0.01)
    for i in range(int(n)):
        print(_register(store, artifacts, "m", f"{tag}-{i}"), flush=True)
""")


def test_concurrent_registrations_from_processes_never_share_a_number(pg_url, tmp_path):
    # Given 1.0.0 in production and 4 processes ready to register 4 versions each
    ctx = make_context(pg_url, tmp_path)
    _first_in_production(ctx)
    n_procs, per_proc = 4, 4
    go = tmp_path / "go"
    procs = []
    for i in range(n_procs):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _PROCESS, pg_url, str(ctx.artifacts.root), f"p{i}", str(per_proc),
             str(tmp_path / f"ready-{i}"), str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for _ in range(3000):
        if all((tmp_path / f"ready-{i}").exists() for i in range(n_procs)):
            break
        threading.Event().wait(0.01)
    # When they are released at once
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    # Then all succeed, and no number is issued twice
    assert [p.returncode for p in procs] == [0] * n_procs, [err for _, err in outputs]
    got = [line for out, _ in outputs for line in out.split()]
    assert len(got) == len(set(got)) == n_procs * per_proc
    assert sorted(_all_versions(ctx), key=lambda s: tuple(map(int, s.split(".")))) == _expected(n_procs * per_proc)


def test_alias_moves_and_retention_under_concurrency_keep_one_live_target_per_alias(pg_url, tmp_path):
    # Given 8 versions of a model whose retention keeps only 1 unprotected version
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    raw["models"]["direction"]["retention"] = {"max_versions": 1, "max_age_days": 365}
    config = parse_config(raw, "test")
    ctx = make_context(pg_url, tmp_path, config=config)
    _first_in_production(ctx, "direction")
    versions = ["1.0.0"] + [_register(ctx.store, ctx.artifacts, "direction", f"v{i}") for i in range(7)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(5)

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        store = Store(Database(pg_url))
        try:
            barrier.wait(timeout=30)
            for _ in range(12):
                alias = rng.choice(["production", "canary", "candidate"])
                target = rng.choice(versions + [None] * (alias != "production"))
                try:
                    with store.tx() as tx:
                        if rng.random() < 0.25:
                            rollback(tx, "direction", actor=f"t{seed}", reason="drill", now=T0)
                        else:
                            move_alias(tx, "direction", alias, target, actor=f"t{seed}", reason="race", now=T0)
                except PayloadError:
                    pass  # the version was deleted meanwhile, or there is no rollback target: refused
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            store.db.dispose()

    def collector() -> None:
        own = make_context(pg_url, tmp_path, config=config)
        try:
            barrier.wait(timeout=30)
            for _ in range(6):
                run_retention(own, ["direction"], orphans=False)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            own.store.db.dispose()

    # When four threads move aliases and roll back while retention deletes what it may
    threads = [threading.Thread(target=mover, args=(i,)) for i in range(4)] + [threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert errors == []
    run_retention(ctx, ["direction"], orphans=False)
    # Then each alias has exactly one row, its history is one unbroken chain ending at that
    # target, and no alias points at a deleted version
    with ctx.store.tx() as tx:
        counts = tx.aliases.counts("direction")
        current = {k: v.version for k, v in tx.aliases.all("direction").items()}
        moves = tx.aliases.moves("direction", limit=10_000)
        rows = {v.version: v for v in tx.versions.all("direction")}
    assert set(counts.values()) == {1}
    for alias, target in current.items():
        chain = [m for m in moves if m.alias == alias]
        assert chain[0].from_version is None
        for before, after in zip(chain, chain[1:]):
            assert after.from_version == before.to_version, (alias, before.id, after.id)
        assert chain[-1].to_version == target
        if target is not None:
            assert rows[target].deleted_at is None, f"{alias} points at deleted {target}"
    assert any(r.deleted_at is not None for r in rows.values())  # retention did delete some


_CRASHING_TRAINER = textwrap.dedent("""
    import os, sys
    from datetime import datetime
    from pathlib import Path
    from retrain.core.clock import SimClock
    import retrain.steps.train as train
    from tests.conftest import make_context

    url, tmp, run_id, now = sys.argv[1:5]
    ctx = make_context(url, Path(tmp), clock=SimClock(datetime.fromisoformat(now)))
    real = train.register_version

    def register_then_die(tx, *args, **kwargs):
        # The version row is written (and flushed) in the open transaction; the
        # process dies before the commit, as a kill -9 or a power cut would.
        real(tx, *args, **kwargs)
        tx.s.flush()
        os._exit(9)

    train.register_version = register_then_die
    train.train_run(ctx, run_id)
    sys.exit(0)
""")


def test_a_crash_while_registering_leaves_no_half_version_and_gc_collects_the_orphans(pg_url, tmp_path):
    # Given a queued training run of the example model
    now = T0 + timedelta(hours=12)
    clock = SimClock(now)
    ctx = make_context(pg_url, tmp_path, clock=clock)
    with ctx.store.tx() as tx:
        run_id = make_run(tx, "direction", now, request_id="r-1", decision_id="d-1", priority=4).id
    # When the training process writes its artifacts and dies inside the registration transaction
    proc = subprocess.run([sys.executable, "-c", _CRASHING_TRAINER, pg_url, str(tmp_path), run_id, now.isoformat()],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 9, proc.stderr
    # Then no version is visible, and the run names none
    assert _all_versions(ctx, "direction") == []
    with ctx.store.tx() as tx:
        assert tx.runs.get(run_id).candidate_version is None
        assert tx.audit.events("direction", kind="version") == []
    left = list(ctx.artifacts.iter_digests())
    assert len(left) == 3  # model, drift reference, holdout: written, never referenced
    written = datetime.fromtimestamp(max(ctx.artifacts.path_for(d).stat().st_mtime for d in left), timezone.utc)
    # When gc runs within the grace period, Then it leaves them (a training may be about to register them)
    clock.set(written + timedelta(minutes=30))
    assert run_retention(ctx).files == []
    # When gc runs after the grace period, Then it removes exactly those orphans and says so
    clock.set(written + timedelta(minutes=61))
    report = run_retention(ctx)
    assert sorted(f.sha256 for f in report.files) == sorted(left)
    assert all(f.what.startswith("orphan") for f in report.files) and report.bytes_freed > 0
    assert list(ctx.artifacts.iter_digests()) == []
    with ctx.store.tx() as tx:
        assert any("garbage collection removed" in e.message for e in tx.audit.events(kind="retention"))
