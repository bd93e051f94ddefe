"""Process settings, read once from ``RETRAIN_*`` environment variables.

Everything has a safe default that needs no service: SQLite and a file broker
under ``RETRAIN_HOME`` (default ``./.retrain``). Point the URLs at Postgres and
Redis (or RabbitMQ) for a real deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrain.core.clock import time_zone
from retrain.core.errors import ConfigError

__all__ = ["Settings", "TimeZoneName", "load_settings"]


def _known_zone(name: str) -> str:
    time_zone(name)
    return name


#: An IANA time zone name, checked by :func:`retrain.core.clock.time_zone` (settings and the model file).
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRAIN_", extra="ignore")

    home: Path = Field(default=Path(".retrain"), description="Directory for the embedded default's files")
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite under home")
    broker_url: str = Field(default="", description="Celery broker; default a SQLite file broker under home")
    result_backend: str | None = Field(default=None, description="Celery result backend, for observability only")
    artifact_root: Path | None = Field(default=None, description="Artifact store root; default home/artifacts")
    # Octal strings (0440, 0750): artifacts are a desk's IP, so not world-readable by default.
    artifact_file_mode: int = Field(default=0o440, description="Mode of artifact files: read bits only")
    artifact_dir_mode: int = Field(default=0o750, description="Mode of the folders the artifact store creates")
    config: Path | None = Field(default=None, description="Model file (retrain.toml)")
    sweep_interval_s: float = Field(default=60.0, gt=0)
    relay_interval_s: float = Field(default=10.0, gt=0)
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    beat_lease_s: float = Field(default=30.0, gt=0, description="One beat sends at a time: its lease (workers.beat)")
    timezone: TimeZoneName = "UTC"
    training_slots: int = Field(default=2, ge=1, le=3)
    max_attempts: int = Field(default=3, ge=1)
    lease_s: float = Field(default=120.0, gt=0)
    train_soft_time_limit_s: int = Field(default=1800, gt=0)
    train_time_limit_s: int = Field(default=2100, gt=0)
    visibility_timeout_s: int = Field(default=7200, gt=0)
    worker_id: str = ""
    # Orchestration (issue 6): a queued, validating or promoting run, or an open request,
    # with no sign of life for this long has its message sent again (it may have been
    # lost with a broker that restarted without persistence); duplicates are harmless.
    requeue_after_s: float = Field(default=120.0, gt=0)
    # Bodies above this are refused before they are decoded, and kept as dead letters.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # RabbitMQ only: 0 (default) declares plain queues, as any Celery producer does; 1-255
    # declares priority queues, which every other producer must then declare alike.
    amqp_max_priority: int = Field(default=0, ge=0, le=255)
    # Ingest dead-letters a row timestamped more than this ahead of the worker's clock (a
    # client with a wrong clock, or a bad ts): it would make a metric bucket in the future.
    max_clock_skew_s: float = Field(default=86400.0, gt=0)
    # On a cold shutdown (SIGQUIT), running tasks get this long to finish before they are
    # cancelled and handed back to the broker (Celery's soft shutdown).
    soft_shutdown_timeout_s: float = Field(default=30.0, ge=0)
    # Fault tests only: allow a visibility timeout below the training hard limit, so Redis
    # hands a running training to a second worker (the lease must stop it).
    allow_short_visibility_timeout: bool = False

    @field_validator("artifact_file_mode", "artifact_dir_mode", mode="before")
    @classmethod
    def _octal_mode(cls, v, info):
        from retrain.artifacts import parse_dir_mode, parse_file_mode

        return (parse_file_mode if info.field_name == "artifact_file_mode" else parse_dir_mode)(v)

    def model_post_init(self, _ctx) -> None:
        home = self.home
        if not self.database_url:
            self.database_url = f"sqlite:///{(home / 'retrain.db').as_posix()}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{(home / 'broker.db').as_posix()}"
        if self.artifact_root is None:
            self.artifact_root = home / "artifacts"
        from retrain.queues import check_visibility_timeout

        check_visibility_timeout(self)  # a ConfigError, which pydantic passes through as it is

    def config_path(self) -> Path:
        """The model file: RETRAIN_CONFIG, else ./retrain.toml, else the shipped example."""
        if self.config is not None:
            return self.config
        local = Path("retrain.toml")
        if local.exists():
            return local
        return Path(__file__).resolve().parent / "examples" / "direction.toml"

    def ensure_home(self) -> None:
        if self.database_url.startswith("sqlite") or self.broker_url.startswith("sqla+sqlite"):
            self.home.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with errors that name the RETRAIN_ variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"RETRAIN_{field.upper()}" if field != "settings" else "RETRAIN_* settings"
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
