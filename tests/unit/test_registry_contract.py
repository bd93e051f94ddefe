"""The registry's public surface: names others import, the rollback payload, the retention settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from retrain.config import parse_config
from retrain.core.errors import ConfigError, PayloadError
from retrain.core.payloads import RollbackPayload, parse_payload
from retrain.queues import ROUTES

EXAMPLE = Path(__file__).resolve().parents[2] / "retrain" / "examples" / "direction.toml"


def test_registry_public_api_is_pinned():
    import retrain.registry as registry

    assert {"register_version", "move_alias", "rollback", "resolve_rollback", "delete_version", "protected_versions",
            "referenced_digests", "aliases_at", "served_at", "load_verified", "verify_artifact", "version_record",
            "version_records", "NewVersion", "VersionUnavailableError", "ALIASES"} <= set(registry.__all__)
    assert registry.ALIASES == ("production", "candidate", "canary", "previous")
    # A refused rollback is permanent: the task decorator dead-letters PayloadErrors instead of retrying.
    assert issubclass(registry.VersionUnavailableError, PayloadError)


def test_rollback_payload_takes_an_optional_version_and_requires_a_reason():
    # Given the payload the rollout sends, When it is parsed, Then defaults fill in
    p = parse_payload(RollbackPayload, {"v": 1, "model": "direction", "reason": "canary 12 % worse"})
    assert (p.version, p.from_version, p.actor) == (None, None, "api")
    # and a malformed version or a missing reason is refused with the field named
    with pytest.raises(PayloadError, match="version"):
        parse_payload(RollbackPayload, {"v": 1, "model": "direction", "version": "latest", "reason": "x"})
    with pytest.raises(PayloadError, match="reason"):
        parse_payload(RollbackPayload, {"v": 1, "model": "direction"})


def test_registry_tasks_are_routed():
    assert ROUTES["retrain.rollback"] == "promotion"
    assert ROUTES["retrain.retention"] == "monitoring"


def test_retention_is_configured_per_model_with_defaults_of_10_versions_and_30_days():
    raw = tomllib.loads(EXAMPLE.read_text())
    default = parse_config(raw).model("direction").retention
    assert (default.max_versions, default.max_age_days) == (10, 30.0)
    raw["models"]["direction"]["retention"] = {"max_versions": 4, "max_age_days": 7}
    assert parse_config(raw).model("direction").retention.max_versions == 4
    # When a value is invalid, Then start-up fails naming the field
    raw["models"]["direction"]["retention"] = {"max_versions": 0}
    with pytest.raises(ConfigError, match="models.direction.retention.max_versions"):
        parse_config(raw)
