"""Template rows, always scoped to their owner: another user's id behaves as if it did not exist."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Template


async def create_template(session: AsyncSession, owner_id: uuid.UUID, fields: dict[str, Any]) -> Template:
    template = Template(owner_id=owner_id, **fields)
    session.add(template)
    await session.commit()
    await session.refresh(template)
    return template


async def list_templates(
    session: AsyncSession, owner_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[Template]:
    """Newest first; ids are time-ordered, so the cursor is the last id seen."""
    stmt = select(Template).where(Template.owner_id == owner_id)
    if before is not None:
        stmt = stmt.where(Template.id < before)
    stmt = stmt.order_by(Template.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def get_template(session: AsyncSession, owner_id: uuid.UUID, template_id: uuid.UUID) -> Template | None:
    stmt = select(Template).where(Template.id == template_id, Template.owner_id == owner_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def update_template(
    session: AsyncSession, owner_id: uuid.UUID, template_id: uuid.UUID, fields: dict[str, Any]
) -> Template | None:
    stmt = (
        update(Template)
        .where(Template.id == template_id, Template.owner_id == owner_id)
        .values(**fields, updated_at=func.now())
        .returning(Template)
    )
    template = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return template


async def delete_template(session: AsyncSession, owner_id: uuid.UUID, template_id: uuid.UUID) -> bool:
    stmt = delete(Template).where(Template.id == template_id, Template.owner_id == owner_id).returning(Template.id)
    deleted = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return deleted is not None
