"""All configuration in one pydantic-settings class, read once at start-up and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.webhooks import parse_schedule


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAYGEN_", env_file=None, extra="ignore")

    mode: Literal["development", "production"] = "development"
    home: Path = Path(".daygen")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    database_url: str | None = None
    redis_url: str | None = None
    redis_namespace: str = "daygen"
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    public_base_url: str | None = None
    private_assets: bool = False
    signed_url_ttl_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(100_000_000, ge=1)
    asset_ttl_seconds: int | None = Field(None, ge=60)

    jwt_secret: SecretStr | None = None
    jwt_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    cors_origins: str = ""

    ideogram_api_key: SecretStr | None = None
    ideogram_base_url: str = "https://api.ideogram.ai"
    dashscope_api_key: SecretStr | None = None
    dashscope_base_url: str = "https://dashscope-intl.aliyuncs.com/api/v1"
    providers_config: Path = Path(__file__).resolve().parents[1] / "configs" / "providers.yaml"
    billing_config: Path = Path(__file__).resolve().parents[1] / "configs" / "billing.yaml"
    dashscope_async_tasks: bool = False
    dashscope_poll_seconds: float = Field(10.0, gt=0)
    dashscope_task_timeout_seconds: float = Field(600.0, gt=0)
    provider_outage_seconds: float = Field(60.0, gt=0)
    provider_max_attempts: int = Field(4, ge=1)
    provider_backoff_seconds: float = Field(0.5, gt=0)
    provider_backoff_cap_seconds: float = Field(20.0, gt=0)
    provider_rate_limit_budget_seconds: float = Field(600.0, ge=0)
    provider_connect_timeout_seconds: float = Field(5.0, gt=0)
    provider_read_timeout_seconds: float = Field(120.0, gt=0)
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    checkout_return_url: str | None = None  # where Stripe Checkout sends the buyer back (default: /studio)

    signup_credits: int = Field(20, ge=0)
    # How often the ledger looks for accounts whose monthly allowance is due (configs/billing.yaml plans).
    allowance_check_seconds: float = Field(60.0, gt=0)
    max_json_body_bytes: int = Field(1_000_000, ge=1024)
    job_lease_seconds: float = Field(60.0, gt=0)
    api_base_url: str | None = None
    webhook_allowed_hosts: str = ""
    webhook_retry_schedule: str = "5,30,120,600,1800,3600,10800,21600,43200,86400"
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0, le=1024 * 1024)
    webhook_poll_seconds: float = Field(1.0, gt=0)
    webhook_concurrency: int = Field(32, ge=1)
    webhook_secret_overlap_seconds: int = Field(24 * 3600, ge=0)
    api_replicas: int = Field(1, ge=1)
    api_max_ongoing_requests: int = Field(5000, ge=10)
    ws_heartbeat_seconds: float = Field(15.0, gt=0)
    ws_max_pending_events: int = Field(1000, ge=10)
    ws_max_subscriptions: int = Field(1000, ge=1)
    ray_dashboard: bool = True
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str | None) -> str | None:
        """SQLAlchemy needs the asyncpg driver named in the URL; accept plain libpq URLs too."""
        if url is None:
            return None
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, text: str) -> str:
        parse_schedule(text)  # refuse a bad schedule at start-up, not at the first failed delivery
        return text

    @property
    def webhook_schedule(self) -> tuple[float, ...]:
        return parse_schedule(self.webhook_retry_schedule)

    @property
    def webhook_allowed_host_set(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip())

    def provider_configured(self, provider: str) -> bool:
        """Whether the provider has the API key it needs (the offline engine needs none)."""
        name = {"ideogram": "ideogram_api_key", "qwen": "dashscope_api_key"}.get(provider)
        return name is None or getattr(self, name) is not None

    @property
    def api_base(self) -> str:
        """Where clients reach the API, for links made outside a request (webhook payloads)."""
        return (self.api_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def checkout_return(self) -> str:
        return (self.checkout_return_url or f"{self.api_base}/studio").rstrip("/")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def missing_required(self) -> list[str]:
        """Env names of what the services need; `daygen up` fills these in development mode."""
        names = ("database_url", "redis_url", "storage_url", "jwt_secret")
        return ["DAYGEN_" + n.upper() for n in names if getattr(self, n) is None]

    def require_complete(self) -> None:
        if missing := self.missing_required():
            raise ValueError("missing settings: " + ", ".join(missing))
