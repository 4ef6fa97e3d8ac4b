"""Account webhooks: endpoints, the signing secret, and each endpoint's delivery log."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import APIRouter, Depends, Response, status

from daygen.errors import InvalidInput, NotFound
from pipelines.webhooks import check_target, new_secret
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import Cursor, Limit, split_page
from serve_app.schemas import (
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointPage,
    WebhookEndpointUpdate,
    WebhookSecretOut,
)
from storage import webhooks as queries
from storage.models import User, WebhookDelivery, WebhookEndpoint

v1 = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=[Depends(require_json)])


def endpoint_out(endpoint: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        eventTypes=list(endpoint.event_types),
        enabled=endpoint.enabled,
        disabledReason=endpoint.disabled_reason,
        createdAt=endpoint.created_at,
        updatedAt=endpoint.updated_at,
    )


def delivery_out(delivery: WebhookDelivery) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=delivery.id,
        eventType=delivery.event_type,
        eventId=delivery.event_id,
        jobId=delivery.job_id,
        status=delivery.status,
        attempts=delivery.attempts,
        lastStatusCode=delivery.last_status_code,
        lastError=delivery.last_error,
        lastResponse=delivery.last_response,
        nextAttemptAt=delivery.next_attempt_at if delivery.status == "pending" else None,
        createdAt=delivery.created_at,
        deliveredAt=delivery.delivered_at,
    )


def secret_out(user: User) -> WebhookSecretOut:
    assert user.webhook_secret is not None
    return WebhookSecretOut(secret=user.webhook_secret, previousSecretValidUntil=user.webhook_secret_previous_until)


async def _checked_url(services: ServicesDep, url: str) -> str:
    """The SSRF guard, at the door: a URL no delivery could be sent to is a 422 now."""
    return (await check_target(url, services.settings.webhook_allowed_host_set, field="url")).url


async def _owned(session: SessionDep, user: User, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await queries.get_endpoint(session, user.id, endpoint_id)
    if endpoint is None:
        raise NotFound("webhook endpoint not found")
    return endpoint


@v1.get("/secret")
async def get_secret(user: CurrentUser, session: SessionDep) -> WebhookSecretOut:
    """The `whsec_...` secret deliveries are signed with (Standard Webhooks); made on first use."""
    return secret_out(await queries.ensure_secret(session, user.id, new_secret()))


@v1.post("/secret/rotate")
async def rotate_secret(user: CurrentUser, services: ServicesDep, session: SessionDep) -> WebhookSecretOut:
    """A new secret at once; the old one keeps signing deliveries alongside it for the overlap window."""
    overlap = timedelta(seconds=services.settings.webhook_secret_overlap_seconds)
    await queries.ensure_secret(session, user.id, new_secret())
    return secret_out(await queries.rotate_secret(session, user.id, new_secret(), overlap))


@v1.post("", status_code=status.HTTP_201_CREATED)
async def create_endpoint(
    body: WebhookEndpointCreate, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> WebhookEndpointOut:
    url = await _checked_url(services, body.url)
    await queries.ensure_secret(session, user.id, new_secret())
    endpoint = await queries.create_endpoint(
        session, user.id, url=url, description=body.description, event_types=body.eventTypes
    )
    return endpoint_out(endpoint)


@v1.get("")
async def list_endpoints(
    user: CurrentUser, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> WebhookEndpointPage:
    rows = await queries.list_endpoints(session, user.id, limit=limit + 1, before=cursor)
    page, next_cursor = split_page(rows, limit)
    return WebhookEndpointPage(items=[endpoint_out(e) for e in page], nextCursor=next_cursor)


@v1.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> WebhookEndpointOut:
    return endpoint_out(await _owned(session, user, endpoint_id))


@v1.patch("/{endpoint_id}")
async def update_endpoint(
    endpoint_id: uuid.UUID, body: WebhookEndpointUpdate, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> WebhookEndpointOut:
    """Change the URL, description or event types; `enabled: true` turns an endpoint back on (after a 410)."""
    endpoint = await _owned(session, user, endpoint_id)
    given = body.model_dump(exclude_unset=True)
    if not given:
        raise InvalidInput("nothing to change", details=[{"field": "body", "message": "give at least one field"}])
    if given.get("url") is None and "url" in given:
        raise InvalidInput("url cannot be removed", details=[{"field": "url", "message": "must be a URL"}])
    for name in ("eventTypes", "enabled"):
        if name in given and given[name] is None:
            raise InvalidInput(f"{name} cannot be null", details=[{"field": name, "message": "must not be null"}])
    changes = {}
    if "url" in given:
        changes["url"] = await _checked_url(services, given["url"])
    if "description" in given:
        changes["description"] = given["description"]
    if "eventTypes" in given:
        changes["event_types"] = given["eventTypes"]
    if "enabled" in given:
        changes["enabled"] = given["enabled"]
    return endpoint_out(await queries.update_endpoint(session, endpoint, changes))


@v1.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_endpoint(endpoint_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """The endpoint and its delivery log go; nothing more is sent to it."""
    await queries.delete_endpoint(session, await _owned(session, user, endpoint_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@v1.get("/{endpoint_id}/deliveries")
async def list_deliveries(
    endpoint_id: uuid.UUID, user: CurrentUser, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> WebhookDeliveryPage:
    """Newest first: each event sent (or to be sent) to the endpoint, its attempts and the last answer."""
    endpoint = await _owned(session, user, endpoint_id)
    rows = await queries.list_deliveries(session, endpoint.id, limit=limit + 1, before=cursor)
    page, next_cursor = split_page(rows, limit)
    return WebhookDeliveryPage(items=[delivery_out(d) for d in page], nextCursor=next_cursor)


@v1.post("/{endpoint_id}/deliveries/{delivery_id}/redeliver", status_code=status.HTTP_202_ACCEPTED)
async def redeliver(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> WebhookDeliveryOut:
    """Send it again now (same `webhook-id`, so receivers can tell it is the same event)."""
    endpoint = await _owned(session, user, endpoint_id)
    delivery = await queries.redeliver(session, endpoint.id, delivery_id)
    if delivery is None:
        raise NotFound("delivery not found, or being sent right now")
    return delivery_out(delivery)
