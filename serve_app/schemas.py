"""Request and response bodies. /v1 inputs forbid unknown fields; /api inputs ignore them."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipelines.billing_config import Limits


def _no_nul(value: str) -> str:
    """Postgres text can't hold NUL, so refuse it here rather than fail at the insert."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _storable_json(value: dict[str, Any]) -> dict[str, Any]:
    """JSONB refuses NUL in strings and keys, and NaN or Infinity, which Python's JSON parser lets through."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                _no_nul(key)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            _no_nul(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    return value


NoNul = AfterValidator(_no_nul)
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]


def _email(value: str) -> str:
    value = value.strip()
    local, at, domain = value.partition("@")
    labels = domain.split(".")
    if not at or not local or "@" in domain or len(labels) < 2 or not all(labels) or any(c.isspace() for c in value):
        raise ValueError("not a valid email address")
    return value


Email = Annotated[str, StringConstraints(min_length=3, max_length=254), NoNul, AfterValidator(_email)]
LoginEmail = Annotated[str, StringConstraints(min_length=1, max_length=254), NoNul]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), NoNul]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# -- auth ---------------------------------------------------------------------------------


class SignupIn(Strict):
    email: Email
    password: Password
    displayName: DisplayName | None = None


class LoginIn(Strict):
    email: LoginEmail
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ApiSignupIn(Lenient):
    email: Email
    password: Password
    displayName: DisplayName | None = None


class ApiLoginIn(Lenient):
    email: LoginEmail
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class UserOut(Out):
    id: uuid.UUID
    email: str
    displayName: str | None
    role: Literal["user", "admin"]
    credits: float
    createdAt: datetime
    updatedAt: datetime


class AuthOut(Out):
    accessToken: str
    tokenType: Literal["bearer"] = "bearer"
    user: UserOut


class ApiUser(Out):
    """The user object the daygen web frontend reads."""

    id: uuid.UUID
    authUserId: uuid.UUID
    email: str
    displayName: str | None
    credits: float
    profileImage: str | None
    role: Literal["USER", "ADMIN"]
    createdAt: datetime
    updatedAt: datetime


class ApiAuthOut(Out):
    accessToken: str
    user: ApiUser


# -- templates ----------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul]
Modality = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50), NoNul]
ShortText = Annotated[str, StringConstraints(max_length=200), NoNul]
LongText = Annotated[str, StringConstraints(max_length=10_000), NoNul]


class TemplateFields(BaseModel):
    name: Name
    modality: Modality
    category: ShortText | None = None
    description: LongText | None = None
    prompt: LongText | None = None
    params: JsonObject | None = None


class TemplateCreate(TemplateFields, Strict):
    pass


class TemplateChanges(BaseModel):
    """A partial update: fields left out stay as they are; name and modality can't be cleared."""

    name: Name | None = None
    modality: Modality | None = None
    category: ShortText | None = None
    description: LongText | None = None
    prompt: LongText | None = None
    params: JsonObject | None = None

    @model_validator(mode="after")
    def _required_stay_set(self) -> TemplateChanges:
        for field in ("name", "modality"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class TemplateUpdate(TemplateChanges, Strict):
    pass


class ApiTemplateCreate(TemplateFields, Lenient):
    pass


class ApiTemplateUpdate(TemplateChanges, Lenient):
    pass


class TemplateOut(Out):
    id: uuid.UUID
    name: str
    modality: str
    category: str | None
    description: str | None
    prompt: str | None
    params: dict[str, Any] | None
    createdAt: datetime
    updatedAt: datetime


class TemplatePage(Out):
    items: list[TemplateOut]
    nextCursor: str | None


class ApiTemplatePage(Out):
    templates: list[TemplateOut]
    nextCursor: str | None
    hasNextPage: bool


# -- jobs ---------------------------------------------------------------------------------


OperationName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class StepCreate(Strict):
    operation: OperationName
    params: JsonObject = Field(default_factory=dict)
    input: Literal["previous"] | None = Field(None, description="`previous`: the image is the step before's output")


class JobCreate(Strict):
    """One operation (`operation` + `params`), or a chain of them (`steps`)."""

    operation: OperationName | None = None
    params: JsonObject | None = None
    steps: list[StepCreate] | None = None
    webhookUrl: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives the job's terminal event, signed"
    )
    orgId: uuid.UUID | None = Field(None, description="charge the job to this organisation (you are a member)")

    def shape_problem(self) -> tuple[str, str] | None:
        """(field, message) when the body is neither one operation nor a chain; the route answers 422."""
        if self.operation is None and self.steps is None:
            return "operation", "give an operation (with params) or steps"
        if self.operation is not None and self.steps is not None:
            return "steps", "give an operation or steps, not both"
        if self.steps is not None and self.params is not None:
            return "params", "a chain's params go inside each step"
        return None


MAX_BATCH = 100


class BatchItem(JobCreate):
    """One job of a batch: the body of `POST /v1/jobs`, plus its own idempotency key (the batch names
    the organisation, if any, for all its jobs)."""

    idempotencyKey: str | None = Field(None, max_length=1000)
    orgId: None = Field(None, description="set on the batch, not on its jobs")


class JobBatchCreate(Strict):
    # Items are checked one by one, so one bad item is that item's 422, not the batch's.
    jobs: list[Any] = Field(min_length=1, max_length=MAX_BATCH)
    orgId: uuid.UUID | None = Field(None, description="charge every job to this organisation")


class BatchItemResult(Out):
    status: int
    jobId: uuid.UUID | None = None
    error: dict[str, Any] | None = None


class JobBatchResult(Out):
    results: list[BatchItemResult]


JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobAccepted(Out):
    jobId: uuid.UUID
    status: JobStatus


class CheckoutCreate(Strict):
    pack: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    saveCard: bool = Field(False, description="keep the card for auto top-up (charged while you are away)")
    orgId: uuid.UUID | None = Field(None, description="buy for this organisation (you are an owner)")


class AutoTopUpSet(Strict):
    pack: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    threshold: Annotated[Decimal, Field(ge=0, le=10**6, max_digits=10, decimal_places=3, allow_inf_nan=False)] = Field(
        description="buy the pack when the balance falls under this many credits"
    )


class AutoTopUpOut(Out):
    enabled: bool
    pack: str | None
    threshold: float | None
    cardSaved: bool = Field(description="a card was saved at a checkout with saveCard")


class SubscribeCreate(Strict):
    plan: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    orgId: uuid.UUID | None = Field(None, description="subscribe this organisation (you are an owner)")


class CheckoutOut(Out):
    sessionId: str
    url: str = Field(description="Stripe Checkout's page for the buyer")


class StripeReceived(Out):
    received: bool
    credited: bool = Field(description="whether this event added credits (a repeat adds none)")
    plan: str | None = Field(None, description="the plan this event set, when it set one")


class WalletBalance(Out):
    balance: float = Field(description="credits")


class QuoteStep(Out):
    operation: str
    provider: str
    units: int = Field(description="images it asks for (one upscale, one description)")
    unitCredits: float
    credits: float


class JobQuote(Out):
    credits: float = Field(description="what submitting the body would hold, and charge if every step runs")
    balance: float
    enough: bool = Field(description="whether the balance covers it now")
    steps: list[QuoteStep]


class AssetOut(Out):
    id: uuid.UUID
    url: str
    contentType: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    source: Literal["upload", "job"]
    jobId: uuid.UUID | None
    expiresAt: datetime | None
    createdAt: datetime


class AssetPage(Out):
    items: list[AssetOut]
    nextCursor: str | None


class ApiBase64Upload(Lenient):
    base64Data: Annotated[str, StringConstraints(min_length=1)]
    mimeType: str | None = None


class ApiUploaded(Out):
    """What the daygen frontend's upload calls answer: a storage URL, never the bytes."""

    success: bool = True
    id: uuid.UUID
    url: str
    key: str
    mimeType: str
    size: int
    width: int | None
    height: int | None


class ApiFile(Out):
    """One gallery entry as the daygen frontend reads it."""

    id: uuid.UUID
    fileName: str
    fileUrl: str
    fileSize: int
    mimeType: str
    prompt: str | None
    model: str | None
    jobId: uuid.UUID | None
    isPublic: bool
    width: int | None
    height: int | None
    createdAt: datetime
    updatedAt: datetime


class ApiFilePage(Out):
    items: list[ApiFile]
    totalCount: int
    nextCursor: str | None


class JobError(Out):
    code: str
    message: str


class JobResult(Out):
    assets: list[AssetOut]
    text: str | None = None


class JobStepOut(Out):
    operation: str
    input: Literal["previous"] | None
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    cost: float
    assets: list[AssetOut]
    text: str | None


class JobOut(Out):
    id: uuid.UUID
    operation: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    progress: int
    params: dict[str, Any]
    cost: float
    attempt: int
    error: JobError | None
    result: JobResult | None
    steps: list[JobStepOut]
    createdAt: datetime
    startedAt: datetime | None
    completedAt: datetime | None


class JobPage(Out):
    items: list[JobOut]
    nextCursor: str | None


class ProviderOut(Out):
    provider: str
    queued: int
    running: int
    pausedForSeconds: float
    unavailable: JobError | None = Field(
        None, description="why new jobs for it are refused right now (503), if they are"
    )
    unavailableForSeconds: float = 0
    actors: int
    maxRunningJobs: int
    maxInflightImages: int | None
    requestsPerMinute: float | None


class ProviderList(Out):
    items: list[ProviderOut]


WebhookEventType = Literal[
    "job.queued", "job.started", "job.progress", "job.step_succeeded", "job.succeeded", "job.failed", "job.canceled"
]
DEFAULT_WEBHOOK_EVENTS: list[str] = ["job.succeeded", "job.failed", "job.canceled"]
Description = Annotated[str, StringConstraints(max_length=500)]


def _distinct(values: list[str] | None) -> list[str] | None:
    return None if values is None else list(dict.fromkeys(values))


EventTypes = Annotated[list[WebhookEventType], Field(min_length=1), AfterValidator(_distinct)]


class WebhookEndpointCreate(Strict):
    url: str = Field(max_length=2048)
    description: Description | None = None
    eventTypes: EventTypes = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))


class WebhookEndpointUpdate(Strict):
    url: str | None = Field(None, max_length=2048)
    description: Description | None = None
    eventTypes: EventTypes | None = None
    enabled: bool | None = None


class WebhookEndpointOut(Out):
    id: uuid.UUID
    url: str
    description: str | None
    eventTypes: list[str]
    enabled: bool
    disabledReason: str | None
    createdAt: datetime
    updatedAt: datetime


class WebhookEndpointPage(Out):
    items: list[WebhookEndpointOut]
    nextCursor: str | None


class WebhookSecretOut(Out):
    secret: str
    previousSecretValidUntil: datetime | None


class WebhookDeliveryOut(Out):
    id: uuid.UUID
    eventType: str
    eventId: int
    jobId: uuid.UUID
    status: Literal["pending", "delivering", "succeeded", "failed"]
    attempts: int
    lastStatusCode: int | None
    lastError: str | None
    lastResponse: str | None
    nextAttemptAt: datetime | None
    createdAt: datetime
    deliveredAt: datetime | None


class WebhookDeliveryPage(Out):
    items: list[WebhookDeliveryOut]
    nextCursor: str | None


# -- admin --------------------------------------------------------------------------------


Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500), NoNul]


def _credits_change(value: Decimal) -> Decimal:
    if value == 0:
        raise ValueError("give a non-zero amount: positive grants, negative revokes")
    return value


class CreditsAdjust(Strict):
    amount: Annotated[
        Decimal,
        Field(ge=-(10**9), le=10**9, max_digits=13, decimal_places=3, allow_inf_nan=False),
        AfterValidator(_credits_change),
    ] = Field(description="credits to grant (positive) or revoke (negative)")
    reason: Reason


class CreditsAdjusted(Out):
    userId: uuid.UUID
    amount: float
    balance: float
    repeat: bool = Field(description="an earlier request with the same Idempotency-Key made this change")


class AccountAction(Strict):
    reason: Reason


class PlanOut(Out):
    """The caller's plan, limits and credits."""

    plan: str
    allowance: float = Field(description="credits granted each calendar month (UTC); unused ones expire")
    status: Literal["active", "throttled"]
    limits: LimitsOut
    balance: float
    creditsToday: float
    creditsThisMonth: float


LimitCredits = Annotated[Decimal, Field(ge=0, le=10**9, max_digits=13, decimal_places=3, allow_inf_nan=False)]


class LimitsIn(Strict):
    """Overrides of a plan's limits: a field given replaces the plan's (null: no limit), one left out
    keeps the plan's."""

    requestsPerMinute: int | None = Field(None, ge=1, le=1_000_000)
    concurrentJobs: int | None = Field(None, ge=1, le=1_000_000)
    creditsPerDay: LimitCredits | None = None
    creditsPerMonth: LimitCredits | None = None

    def overrides(self) -> dict[str, int | str | None]:
        """The fields given, by their names in configs (`Limits`), credits as text (JSON has no decimals)."""
        return {
            _LIMIT_FIELDS[name]: str(value) if isinstance(value, Decimal) else value
            for name, value in self.model_dump(include=self.model_fields_set).items()
        }


_LIMIT_FIELDS = {
    "requestsPerMinute": "requests_per_minute",
    "concurrentJobs": "concurrent_jobs",
    "creditsPerDay": "credits_per_day",
    "creditsPerMonth": "credits_per_month",
}


def camel_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """Limits by their names in configs, by their names in the API, credits as numbers."""
    names = {snake: camel for camel, snake in _LIMIT_FIELDS.items()}
    return {names[k]: float(v) if isinstance(v, (str, Decimal)) else v for k, v in limits.items() if k in names}


class LimitsOut(Out):
    """Limits checked before a job starts (null: none): jobs a minute (429), queued and running jobs
    at once (429), credits held a UTC day and month (402)."""

    requestsPerMinute: int | None
    concurrentJobs: int | None
    creditsPerDay: float | None
    creditsPerMonth: float | None

    @classmethod
    def of(cls, limits: Limits) -> LimitsOut:
        return cls(**camel_limits(limits.model_dump()))


class PlanChange(Strict):
    plan: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    reason: Reason


class LimitsChange(Strict):
    limits: LimitsIn = Field(description="the account's overrides, replacing any it had; {} for the plan's")
    reason: Reason


class AdminUserOut(Out):
    id: uuid.UUID
    email: str
    displayName: str | None
    role: Literal["user", "admin"]
    status: Literal["active", "throttled", "banned"]
    plan: str
    limits: LimitsOut = Field(description="what applies: the plan's, the overrides, a throttle's caps")
    limitOverrides: dict[str, float | int | None] = Field(description="an admin's overrides of the plan's limits")
    credits: float
    creditsToday: float = Field(description="credits spent today (UTC): held by jobs, less what was given back")
    creditsThisMonth: float
    createdAt: datetime


class AdminUserPage(Out):
    items: list[AdminUserOut]
    nextCursor: str | None


class AdminActionOut(Out):
    id: uuid.UUID
    adminId: uuid.UUID
    adminEmail: str
    action: Literal["credits", "ban", "unban"]
    userId: uuid.UUID
    reason: str
    details: dict[str, Any]
    createdAt: datetime


class AdminActionPage(Out):
    items: list[AdminActionOut]
    nextCursor: str | None


class UsageLineOut(Out):
    userId: uuid.UUID
    email: str | None
    orgId: uuid.UUID | None = Field(description="the organisation charged; null for the account's own")
    provider: str
    operation: str
    calls: int
    failed: int
    images: int
    upstreamMs: int
    credits: float
    providerCost: float = Field(description="what the provider charged, in USD (configs/billing.yaml)")


class UsageReport(Out):
    items: list[UsageLineOut]
    totals: dict[str, float]


# -- organisations ----------------------------------------------------------------------------

OrgName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), NoNul]
OrgRole = Literal["owner", "member"]
MemberCap = Annotated[Decimal, Field(ge=0, le=10**9, max_digits=13, decimal_places=3, allow_inf_nan=False)]


class OrgCreate(Strict):
    name: OrgName


class OrgOut(Out):
    id: uuid.UUID
    name: str
    plan: str
    role: OrgRole = Field(description="yours")
    credits: float = Field(description="the organisation's balance, which its members' jobs spend")
    createdAt: datetime


class OrgList(Out):
    items: list[OrgOut]


class MemberAdd(Strict):
    email: Email
    role: OrgRole = "member"
    creditsPerMonth: MemberCap | None = Field(None, description="what they may spend a UTC month; null: no cap")


class MemberChange(Strict):
    """A field given replaces the member's (creditsPerMonth null: no cap); one left out stays."""

    role: OrgRole | None = None
    creditsPerMonth: MemberCap | None = None


class MemberOut(Out):
    userId: uuid.UUID
    email: str
    role: OrgRole
    creditsPerMonth: float | None
    createdAt: datetime


class OrgDetail(OrgOut):
    members: list[MemberOut]


class AdminOrgOut(Out):
    id: uuid.UUID
    name: str
    plan: str
    limits: LimitsOut
    limitOverrides: dict[str, float | int | None]
    credits: float
    creditsToday: float = Field(description="credits spent today (UTC): held by jobs, less what was given back")
    creditsThisMonth: float
    members: int
    createdAt: datetime


class AdminOrgPage(Out):
    items: list[AdminOrgOut]
    nextCursor: str | None
