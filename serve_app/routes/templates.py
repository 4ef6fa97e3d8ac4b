"""Prompt templates: the owner is always the token's user; others' ids are 404."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from daygen.errors import NotFound
from serve_app.deps import CurrentUser, SessionDep, require_json
from serve_app.pagination import Cursor, Limit, split_page
from serve_app.schemas import (
    ApiTemplateCreate,
    ApiTemplatePage,
    ApiTemplateUpdate,
    TemplateCreate,
    TemplateOut,
    TemplatePage,
    TemplateUpdate,
)
from storage import templates as queries
from storage.models import Template

v1 = APIRouter(prefix="/v1/templates", tags=["templates"], dependencies=[Depends(require_json)])
compat = APIRouter(prefix="/api/templates", tags=["daygen-compatible"], dependencies=[Depends(require_json)])


def template_out(t: Template) -> TemplateOut:
    return TemplateOut(
        id=t.id,
        name=t.name,
        modality=t.modality,
        category=t.category,
        description=t.description,
        prompt=t.prompt,
        params=t.params,
        createdAt=t.created_at,
        updatedAt=t.updated_at,
    )


async def _page(session: SessionDep, user: CurrentUser, limit: int, cursor: uuid.UUID | None):
    page, next_cursor = split_page(
        await queries.list_templates(session, user.id, limit=limit + 1, before=cursor), limit
    )
    items = [template_out(t) for t in page]
    return items, next_cursor


async def _get(session: SessionDep, user: CurrentUser, template_id: uuid.UUID) -> Template:
    template = await queries.get_template(session, user.id, template_id)
    if template is None:
        raise NotFound("template not found")
    return template


async def _update(session: SessionDep, user: CurrentUser, template_id: uuid.UUID, fields: dict) -> TemplateOut:
    if not fields:
        return template_out(await _get(session, user, template_id))
    template = await queries.update_template(session, user.id, template_id, fields)
    if template is None:
        raise NotFound("template not found")
    return template_out(template)


async def _delete(session: SessionDep, user: CurrentUser, template_id: uuid.UUID) -> Response:
    if not await queries.delete_template(session, user.id, template_id):
        raise NotFound("template not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@v1.post("", status_code=status.HTTP_201_CREATED)
async def create(body: TemplateCreate, user: CurrentUser, session: SessionDep) -> TemplateOut:
    return template_out(await queries.create_template(session, user.id, body.model_dump()))


@v1.get("")
async def list_(user: CurrentUser, session: SessionDep, limit: Limit = 20, cursor: Cursor = None) -> TemplatePage:
    items, next_cursor = await _page(session, user, limit, cursor)
    return TemplatePage(items=items, nextCursor=next_cursor)


@v1.get("/{template_id}")
async def get(template_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> TemplateOut:
    return template_out(await _get(session, user, template_id))


@v1.patch("/{template_id}")
async def update(template_id: uuid.UUID, body: TemplateUpdate, user: CurrentUser, session: SessionDep) -> TemplateOut:
    return await _update(session, user, template_id, body.model_dump(exclude_unset=True))


@v1.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(template_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    return await _delete(session, user, template_id)


@compat.post("", status_code=status.HTTP_201_CREATED)
async def compat_create(body: ApiTemplateCreate, user: CurrentUser, session: SessionDep) -> TemplateOut:
    return template_out(await queries.create_template(session, user.id, body.model_dump()))


@compat.get("")
async def compat_list(
    user: CurrentUser, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> ApiTemplatePage:
    items, next_cursor = await _page(session, user, limit, cursor)
    return ApiTemplatePage(templates=items, nextCursor=next_cursor, hasNextPage=next_cursor is not None)


@compat.get("/{template_id}")
async def compat_get(template_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> TemplateOut:
    return template_out(await _get(session, user, template_id))


@compat.patch("/{template_id}")
@compat.put("/{template_id}")
async def compat_update(
    template_id: uuid.UUID, body: ApiTemplateUpdate, user: CurrentUser, session: SessionDep
) -> TemplateOut:
    return await _update(session, user, template_id, body.model_dump(exclude_unset=True))


@compat.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
async def compat_delete(template_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    return await _delete(session, user, template_id)
