"""The model registry on Postgres and on the embedded SQLite default: version records,
aliases and history, rollback, retention with tombstones, tampered artifacts, and the
CLI over all of it. Concurrency and crashes: test_registry_concurrency.py."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from datetime import timedelta

import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.errors import ArtifactError
from retrain.core.versioning import VersionSpec, fingerprint_json
from retrain.registry import (
    NewVersion,
    VersionProtectedError,
    VersionUnavailableError,
    aliases_at,
    delete_version,
    load_verified,
    move_alias,
    protected_versions,
    register_version,
    rollback,
    served_at,
    version_record,
)
from retrain.steps.dispatch import run_step
from retrain.steps.retention import run_retention
from tests.conftest import EXAMPLE_CONFIG, T0, make_context

pytestmark = pytest.mark.timeout(120)

ENTRY = "retrain.examples.direction:train"


def _spec(tag: str, features=("f0", "f1")) -> VersionSpec:
    return VersionSpec(features, ENTRY, fingerprint_json({"C": 1.0}), fingerprint_json({"data": tag}))


def _register(ctx, tag: str, *, model: str = "m", holdout_sha: str | None = None) -> str:
    art = ctx.artifacts.put_object({"model": tag})
    ref = ctx.artifacts.put_object({"reference": tag})
    hold = holdout_sha or ctx.artifacts.put_object({"holdout": tag}).sha256
    with ctx.store.tx() as tx:
        return register_version(tx, NewVersion(model=model, spec=_spec(tag), artifact=art, reference_sha256=ref.sha256,
                                               holdout_sha256=hold, data_rows=100, params={"C": 1.0}),
                                now=ctx.now(), actor="test", artifacts=ctx.artifacts).version


def _promote(ctx, model: str, version: str) -> None:
    with ctx.store.tx() as tx:
        old = move_alias(tx, model, "production", version, actor="test", reason=f"promote {version}", now=ctx.now())
        if old and old != version:
            move_alias(tx, model, "previous", old, actor="test", reason=f"replaced by {version}", now=ctx.now())


def _aliases(ctx, model: str = "m") -> dict[str, str | None]:
    with ctx.store.tx() as tx:
        return {k: v.version for k, v in tx.aliases.all(model).items()}


def _audit(ctx, kind: str, model: str | None = "m"):
    with ctx.store.tx() as tx:
        return tx.audit.events(model, limit=1000, kind=kind)


def _tamper(path) -> None:
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- versions
def test_versions_are_numbered_by_the_semver_rule_and_explain_their_number(any_db_url, tmp_path):
    # Given a model in production at 1.0.0
    ctx = make_context(any_db_url, tmp_path, clock=SimClock(T0))
    assert _register(ctx, "jan") == "1.0.0"
    _promote(ctx, "m", "1.0.0")
    # When it is retrained on new data, then with a new feature schema
    minor = _register(ctx, "feb")
    art = ctx.artifacts.put_object({"model": "wide"})
    with ctx.store.tx() as tx:
        major = register_version(tx, NewVersion(model="m", spec=_spec("feb", ("f0", "f1", "f2")), artifact=art),
                                 now=ctx.now(), actor="test").version
    # Then the numbers follow the rule and each record says why, and from which parent
    assert (minor, major) == ("1.1.0", "2.0.0")
    with ctx.store.tx() as tx:
        r_minor, r_major = version_record(tx, "m", minor), version_record(tx, "m", major)
    assert r_minor.bump_kind == "minor" and "training data changed" in r_minor.bump_reason
    assert r_minor.parent_version == "1.0.0"
    assert r_major.bump_kind == "major" and "added f2" in r_major.bump_reason
    # the bump starts from the highest issued version (1.1.0), not from the parent
    assert "1.1.0 -> 2.0.0" in r_major.bump_reason
    assert [e.subject for e in _audit(ctx, "version")] == ["1.0.0", "1.1.0", "2.0.0"]


def _loop_config():
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    raw["policy"]["approval_days"] = 0
    return parse_config(raw, "direction.toml (test)")


def test_a_trained_version_records_everything_that_produced_it(any_db_url, tmp_path):
    # Given the example model and its real training step
    ctx = make_context(any_db_url, tmp_path, config=_loop_config(), clock=SimClock(T0 + timedelta(hours=12)))
    from retrain.steps.dispatch import drain
    from retrain.steps.requests import sync_models

    sync_models(ctx)
    # When a retraining is requested and the loop runs to promotion
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "direction", "reason": "initial model",
                                                 "requested_by": "test", "approved_by": "test"})
    drain(ctx)
    # Then the version records its artifact, data, schema, parameters, metrics, commit, origin and cost
    with ctx.store.tx() as tx:
        r = version_record(tx, "direction", "1.0.0")
        run = tx.runs.get(r.run_id)
    assert r.aliases == ("production",)
    assert len(r.artifact_sha256) == 64 and r.artifact_size == ctx.artifacts.size(r.artifact_sha256) > 0
    assert r.data_start < r.data_end <= T0 + timedelta(hours=12) and r.data_rows > 1000
    assert len(r.data_fingerprint) == 64 and r.feature_schema == [f"f{i}" for i in range(8)]
    assert r.entry_point == ENTRY and r.hyperparameters["C"] == 1.0 and r.settings == {"lookback_hours": 8}
    assert r.validation is not None and 0 < r.validation["accuracy"] < 1 and r.holdout_rows > 0
    assert r.reference_sha256 and r.holdout_sha256
    assert r.git_commit is None or len(r.git_commit) == 40
    assert r.request_id == run.request_id and r.decision_id == run.decision_id
    assert r.cost_usd == pytest.approx(run.usage["total_usd"]) and r.cost_usd > 0
    assert r.bump_kind == "initial" and r.parent_version is None


# ---------------------------------------------------------------------------- aliases and history
def test_history_answers_which_version_served_at_any_time(any_db_url, tmp_path):
    # Given three promotions an hour apart and a rollback
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock)
    for tag in ("a", "b", "c"):
        _promote(ctx, "m", _register(ctx, tag))
        clock.advance(timedelta(hours=1))
    with ctx.store.tx() as tx:
        rollback(tx, "m", actor="alice", reason="c is worse", now=ctx.now())
    # When we ask what served at various times
    with ctx.store.tx() as tx:
        before = served_at(tx, "m", T0 - timedelta(seconds=1))
        at = [served_at(tx, "m", T0 + timedelta(minutes=30 + 60 * i)) for i in range(4)]
        state = aliases_at(tx, "m", T0 + timedelta(hours=3))
    # Then each answer is the version production pointed to then, with who moved it and why
    assert before is None
    assert at == ["1.0.0", "1.1.0", "1.2.0", "1.1.0"]
    assert state["production"].actor == "alice" and "c is worse" in state["production"].reason
    assert state["previous"].version == "1.2.0"


def test_aliases_refuse_unknown_names_and_deleted_versions(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    v = _register(ctx, "a")
    with ctx.store.tx() as tx:
        with pytest.raises(Exception, match="unknown alias"):
            move_alias(tx, "m", "prod", v, actor="t", reason="typo", now=ctx.now())
        with pytest.raises(VersionUnavailableError, match="no version 9.9.9"):
            move_alias(tx, "m", "candidate", "9.9.9", actor="t", reason="x", now=ctx.now())


# ---------------------------------------------------------------------------- rollback
def test_rollback_goes_to_previous_by_default_and_to_any_retained_version(any_db_url, tmp_path):
    # Given 1.0.0 -> 1.1.0 -> 1.2.0 promoted in turn
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock)
    for tag in ("a", "b", "c"):
        _promote(ctx, "m", _register(ctx, tag))
        clock.advance(timedelta(minutes=5))
    # When production is rolled back with no version named (the task the rollout uses)
    res = run_step(ctx, "retrain.rollback", {"v": 1, "model": "m", "reason": "accuracy fell", "actor": "rollout",
                                             "from_version": "1.2.0"})
    # Then 'previous' serves again and the replaced version becomes the rollback target
    assert (res.status, res.version, res.previous) == ("rolled_back", "1.1.0", "1.2.0")
    assert _aliases(ctx) == {"production": "1.1.0", "previous": "1.2.0"}
    # and a redelivered message changes nothing
    again = run_step(ctx, "retrain.rollback", {"v": 1, "model": "m", "reason": "accuracy fell", "actor": "rollout",
                                               "from_version": "1.2.0"})
    assert again.status == "skipped" and _aliases(ctx)["production"] == "1.1.0"
    # When an operator rolls back to any retained version
    from retrain.steps.promote import rollback as rollback_step

    res = rollback_step(ctx, "m", "1.0.0", actor="bob", reason="known good")
    assert (res.version, res.previous) == ("1.0.0", "1.1.0")
    # Then it is audited with actor and reason, and statuses tell the story
    events = _audit(ctx, "rollback")
    assert [e.actor for e in events] == ["rollout", "rollout", "bob"]
    assert "known good" in events[-1].message
    with ctx.store.tx() as tx:
        statuses = {v.version: v.status for v in tx.versions.all("m")}
    assert statuses == {"1.0.0": "production", "1.1.0": "rolled_back", "1.2.0": "rolled_back"}


def test_rollback_during_a_canary_withdraws_the_canary(any_db_url, tmp_path):
    # Given 1.0.0 in production and 1.1.0 on a 10 % canary
    ctx = make_context(any_db_url, tmp_path)
    _promote(ctx, "m", _register(ctx, "a"))
    canary = _register(ctx, "b")
    with ctx.store.tx() as tx:
        move_alias(tx, "m", "canary", canary, actor="rollout", reason="stage 10 %", now=ctx.now(), share_pct=10)
    # When the rollout asks for a rollback without naming a version
    res = run_step(ctx, "retrain.rollback", {"v": 1, "model": "m", "reason": "canary 12 % worse",
                                             "actor": "rollout"})
    # Then production stays, the canary is withdrawn and marked rolled back
    assert res.status == "rolled_back" and res.version == "1.0.0"
    assert _aliases(ctx) == {"production": "1.0.0", "canary": None}
    with ctx.store.tx() as tx:
        assert tx.versions.get("m", canary).status == "rolled_back"


def test_rollback_refuses_a_deleted_version_or_a_missing_target_with_a_clear_error(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    from retrain.steps.promote import rollback as rollback_step

    first = _register(ctx, "a")
    _promote(ctx, "m", first)
    # Given no previous version: a rollback without a version says so
    with pytest.raises(VersionUnavailableError, match="no previous version"):
        rollback_step(ctx, "m", None, actor="op", reason="x")
    # Given a version deleted by retention
    old = _register(ctx, "b")
    with ctx.store.tx() as tx:
        delete_version(tx, "m", old, actor="retention", reason="older than 30 d", now=ctx.now())
    # When someone rolls back to it, Then it is refused with the date and reason, and nothing moves
    with pytest.raises(VersionUnavailableError, match=r"1\.1\.0 was deleted by retention on .*older than 30 d"):
        rollback_step(ctx, "m", old, actor="op", reason="x")
    assert _aliases(ctx) == {"production": first}


def test_a_tampered_artifact_is_refused_audited_and_never_loaded(any_db_url, tmp_path):
    # Given 1.0.0 -> 1.1.0 in production, and someone alters 1.0.0's artifact on disk
    ctx = make_context(any_db_url, tmp_path)
    v0 = _register(ctx, "a")
    _promote(ctx, "m", v0)
    _promote(ctx, "m", _register(ctx, "b"))
    with ctx.store.tx() as tx:
        sha = tx.versions.get("m", v0).artifact_sha256
    _tamper(ctx.artifacts.path_for(sha))
    # When it is loaded through the registry, Then it is refused and the refusal is audited
    with pytest.raises(ArtifactError, match="corrupt"):
        load_verified(ctx, sha, model="m", version=v0, purpose="serving", actor="router")
    # When a rollback targets it, Then it is refused before any alias moves
    from retrain.steps.promote import rollback as rollback_step

    with pytest.raises(ArtifactError):
        rollback_step(ctx, "m", None, actor="op", reason="try the old one")
    assert _aliases(ctx)["production"] == "1.1.0"
    events = _audit(ctx, "artifact")
    assert [(e.actor, e.subject, e.data["purpose"]) for e in events] == [("router", v0, "serving"),
                                                                         ("op", v0, "rollback")]
    assert all(e.data["sha256"] == sha for e in events)


# ---------------------------------------------------------------------------- retention
def test_retention_keeps_ten_and_thirty_days_never_protected_ones_and_leaves_tombstones(any_db_url, tmp_path):
    # Given 14 versions, one every 4 days; production is an old one, previous older still
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock)
    versions = []
    for i in range(14):
        versions.append(_register(ctx, f"d{i}"))
        if i == 0:
            _promote(ctx, "m", versions[0])
        clock.advance(timedelta(days=4))
    _promote(ctx, "m", versions[1])
    _promote(ctx, "m", versions[2])  # production 1.2.0, previous 1.1.0
    with ctx.store.tx() as tx:
        move_alias(tx, "m", "candidate", versions[13], actor="validation", reason="in shadow", now=ctx.now())
        doomed_row = tx.versions.get("m", versions[0])
        doomed_files = [doomed_row.artifact_sha256, doomed_row.metrics["reference_sha256"],
                        doomed_row.metrics["holdout_sha256"]]
    # When retention runs (defaults: 10 versions, 30 days)
    report = run_retention(ctx, orphans=False)
    # Then versions older than 30 days go, except production and the rollback target
    with ctx.store.tx() as tx:
        rows = {v.version: v for v in tx.versions.all("m")}
        history = tx.aliases.moves("m")
    live = sorted((v for v in rows if rows[v].deleted_at is None), key=lambda s: tuple(map(int, s.split("."))))
    assert live == ["1.1.0", "1.2.0"] + [f"1.{i}.0" for i in range(7, 14)]
    assert len(live) <= 10
    deleted = [d.version for d in report.deleted_versions]
    assert sorted(deleted) == sorted(["1.0.0"] + [f"1.{i}.0" for i in range(3, 7)])
    # and each deleted version is a tombstone: record, reason and audit kept, files gone
    tomb = rows["1.0.0"]
    assert tomb.status == "deleted" and tomb.deleted_at == ctx.now() and "older than 30 d" in tomb.deleted_reason
    assert tomb.artifact_sha256 == doomed_files[0] and tomb.bump_reason
    assert not any(ctx.artifacts.exists(d) for d in doomed_files)
    assert all(ctx.artifacts.exists(rows[v].artifact_sha256) for v in live)
    assert {e.subject for e in _audit(ctx, "retention") if e.subject} == set(deleted)
    assert len(history) == 6  # alias history untouched
    assert report.bytes_freed > 0 and len(report.files) == 3 * len(deleted)
    # and a number is never issued twice, even after its version was deleted
    assert _register(ctx, "new") == "1.14.0"
    # and running it again removes nothing more
    assert run_retention(ctx, orphans=False).deleted_versions == []


def test_retention_is_configurable_per_model_and_respects_shared_files(any_db_url, tmp_path):
    # Given the model file keeps 3 versions of 'direction', and two versions share one holdout file
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    raw["models"]["direction"]["retention"] = {"max_versions": 3, "max_age_days": 365}
    ctx = make_context(any_db_url, tmp_path, config=parse_config(raw, "test"))
    shared = ctx.artifacts.put_object({"holdout": "shared"}).sha256
    versions = [_register(ctx, f"x{i}", model="direction", holdout_sha=shared if i in (0, 5) else None)
                for i in range(6)]
    _promote(ctx, "direction", versions[5])
    # When a dry run, then the real run, apply retention
    dry = run_retention(ctx, ["direction"], dry_run=True, orphans=False)
    with ctx.store.tx() as tx:
        assert all(v.deleted_at is None for v in tx.versions.all("direction"))
    report = run_retention(ctx, ["direction"], orphans=False)
    # Then the dry run announced exactly what the run did: the newest 3 stay
    assert [d.version for d in dry.deleted_versions] == [d.version for d in report.deleted_versions]
    assert [(m.max_versions, m.kept) for m in report.models] == [(3, ["1.5.0", "1.4.0", "1.3.0"])]
    # and the holdout file a live version still uses is kept
    assert ctx.artifacts.exists(shared)
    assert shared not in {f.sha256 for f in report.files}


def test_a_protected_version_cannot_be_deleted(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    v0 = _register(ctx, "a")
    _promote(ctx, "m", v0)
    _promote(ctx, "m", _register(ctx, "b"))
    with ctx.store.tx() as tx:
        assert protected_versions(tx, "m") == {"1.1.0": "production alias", "1.0.0": "rollback target (previous)"}
        with pytest.raises(VersionProtectedError, match="rollback target"):
            delete_version(tx, "m", v0, actor="op", reason="x", now=ctx.now())


# ---------------------------------------------------------------------------- CLI
def _cli(monkeypatch, capsys, ctx, *argv) -> str:
    from retrain.cli import main

    monkeypatch.setenv("RETRAIN_DATABASE_URL", ctx.settings.database_url)
    monkeypatch.setenv("RETRAIN_HOME", str(ctx.settings.home))
    monkeypatch.setenv("RETRAIN_ARTIFACT_ROOT", str(ctx.settings.artifact_root))
    monkeypatch.setenv("RETRAIN_CONFIG", str(EXAMPLE_CONFIG))
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_cli_versions_show_history_rollback_and_gc(any_db_url, tmp_path, monkeypatch, capsys):
    # Given three versions a day apart, two promoted, and the first 40 days old by now
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock)
    for tag in ("a", "b", "c"):
        v = _register(ctx, tag)
        if tag != "c":
            _promote(ctx, "m", v)
        clock.advance(timedelta(days=1))
    # When an operator uses the registry commands, Then each reads well and has --json
    text = _cli(monkeypatch, capsys, ctx, "versions", "m")
    assert "why this number" in text and "1.1.0    production" in text and "3 version(s) of m" in text
    rows = json.loads(_cli(monkeypatch, capsys, ctx, "versions", "m", "--json"))
    assert [r["version"] for r in rows] == ["1.2.0", "1.1.0", "1.0.0"]
    assert "training data changed" in _cli(monkeypatch, capsys, ctx, "show", "m@1.1.0")
    assert json.loads(_cli(monkeypatch, capsys, ctx, "show", "m@previous", "--json"))["version"] == "1.0.0"
    at = (T0 + timedelta(hours=12)).isoformat()
    assert "served by 1.0.0" in _cli(monkeypatch, capsys, ctx, "history", "m", "--at", at)
    assert "production" in _cli(monkeypatch, capsys, ctx, "history", "m")
    out = _cli(monkeypatch, capsys, ctx, "rollback", "m", "--reason", "drill")
    assert "production 1.1.0 -> 1.0.0" in out
    gc = json.loads(_cli(monkeypatch, capsys, ctx, "gc", "--json", "--dry-run"))
    assert gc["dry_run"] and gc["models"][0]["model"] == "m"
    assert "Retention" in _cli(monkeypatch, capsys, ctx, "gc")
