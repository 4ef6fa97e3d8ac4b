"""Asset rows and the objects behind them.

Many rows may share one content-addressed object; the bytes go when the last live row
that references them goes. Filing an object and deleting one take the same per-key lock,
so a new upload of the same bytes can never lose its object to a concurrent delete.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from daygen.errors import NotFound
from daygen.ids import uuid7
from storage import images
from storage.models import Asset, Job
from storage.objects import ObjectStore

Source = Literal["upload", "job"]


def _live(now=None):
    moment = now if now is not None else func.now()
    return (Asset.deleted_at.is_(None)) & or_(Asset.expires_at.is_(None), Asset.expires_at > moment)


async def _lock_key(session: AsyncSession, key: str) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 1))"), {"k": key})


async def save_image(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunks: AsyncIterator[bytes],
    *,
    owner_id: uuid.UUID,
    max_bytes: int,
    max_pixels: int,
    expires_at: datetime | None = None,
) -> Asset:
    """Stream an upload into the store, check it is the image it claims, and record it."""
    async with images.received_image(store, chunks, max_bytes=max_bytes, max_pixels=max_pixels) as received:
        async with sessions.begin() as session:
            await _lock_key(session, received.writer.key)
            stored = await received.writer.commit()
            asset = Asset(
                id=uuid7(),
                owner_id=owner_id,
                key=stored.key,
                sha256=stored.sha256,
                size=stored.size,
                content_type=stored.content_type,
                width=received.width,
                height=received.height,
                source="upload",
                expires_at=expires_at,
            )
            session.add(asset)
            await session.flush()
            await session.refresh(asset)
    return asset


async def asset_id_for_key(session: AsyncSession, owner_id: uuid.UUID, key: str) -> uuid.UUID | None:
    """The caller's newest live asset stored under `key`; another user's is as missing as none."""
    stmt = (
        select(Asset.id).where(Asset.owner_id == owner_id, Asset.key == key, _live()).order_by(Asset.id.desc()).limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_asset(session: AsyncSession, owner_id: uuid.UUID, asset_id: uuid.UUID) -> Asset | None:
    stmt = select(Asset).where(Asset.id == asset_id, Asset.owner_id == owner_id, _live())
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_assets(
    session: AsyncSession,
    owner_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    source: Source | None = None,
    job_id: uuid.UUID | None = None,
) -> list[Asset]:
    stmt = select(Asset).where(Asset.owner_id == owner_id, _live())
    if before is not None:
        stmt = stmt.where(Asset.id < before)
    if source is not None:
        stmt = stmt.where(Asset.source == source)
    if job_id is not None:
        stmt = stmt.where(Asset.job_id == job_id)
    return list((await session.execute(stmt.order_by(Asset.id.desc()).limit(limit))).scalars())


async def resolve_inputs(session: AsyncSession, owner_id: uuid.UUID, refs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The stored objects behind a job's input assets; another user's asset is as missing as none."""
    ids = {name: uuid.UUID(value) for name, value in refs.items()}
    rows = {
        asset.id: asset
        for asset in (
            await session.execute(
                select(Asset).where(Asset.id.in_(set(ids.values())), Asset.owner_id == owner_id, _live())
            )
        ).scalars()
    }
    missing = [name for name, asset_id in ids.items() if asset_id not in rows]
    if missing:
        raise NotFound(
            "input asset not found: " + ", ".join(missing),
            details=[{"field": f"params.{name}", "message": "no such asset"} for name in missing],
        )
    return {name: _input_ref(rows[asset_id]) for name, asset_id in ids.items()}


def _input_ref(asset: Asset) -> dict[str, Any]:
    """What a job step needs to read an input image."""
    return {
        "assetId": str(asset.id),
        "key": asset.key,
        "contentType": asset.content_type,
        "width": asset.width,
        "height": asset.height,
    }


async def job_output_ref(session: AsyncSession, asset_id: uuid.UUID) -> dict[str, Any] | None:
    """An earlier step's output as the next step's input (its owner is the job's, by construction)."""
    asset = await session.get(Asset, asset_id)
    return _input_ref(asset) if asset is not None else None


async def count_assets(session: AsyncSession, owner_id: uuid.UUID) -> int:
    return await session.scalar(select(func.count()).where(Asset.owner_id == owner_id, _live())) or 0


class JobOrigin(NamedTuple):
    """What the gallery reads off the job that made an image: the operation, the params, which step made what."""

    operation: str
    params: dict[str, Any]
    result: dict[str, Any] | None


async def job_origins(session: AsyncSession, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, JobOrigin]:
    if not job_ids:
        return {}
    rows = await session.execute(select(Job.id, Job.operation, Job.params, Job.result).where(Job.id.in_(job_ids)))
    return {job_id: JobOrigin(operation, params or {}, result) for job_id, operation, params, result in rows}


async def _release_object(session: AsyncSession, store: ObjectStore, key: str) -> bool:
    """Delete the object if no live row references it any more; call inside the key's lock."""
    referenced = await session.scalar(select(func.count()).where(Asset.key == key, Asset.deleted_at.is_(None)))
    if referenced:
        return False
    await store.delete(key)
    return True


async def delete_asset(
    sessions: async_sessionmaker[AsyncSession], store: ObjectStore, owner_id: uuid.UUID, asset_id: uuid.UUID
) -> bool:
    """Soft-delete the row; the bytes go when no live row references them. False if not found."""
    async with sessions.begin() as session:
        asset = await get_asset(session, owner_id, asset_id)
        if asset is None:
            return False
        await _lock_key(session, asset.key)
        await session.execute(update(Asset).where(Asset.id == asset_id).values(deleted_at=func.now()))
        await _release_object(session, store, asset.key)
    return True


async def prune_expired(
    sessions: async_sessionmaker[AsyncSession], store: ObjectStore, now: datetime, limit: int = 500
) -> int:
    """Retire assets whose expiry has passed (they already vanished from the API) and free their bytes."""
    async with sessions() as session:
        expired = (
            await session.execute(
                select(Asset.id, Asset.key)
                .where(Asset.deleted_at.is_(None), Asset.expires_at <= now)
                .order_by(Asset.expires_at)
                .limit(limit)
            )
        ).all()
    for asset_id, key in expired:
        async with sessions.begin() as session:
            await _lock_key(session, key)
            await session.execute(update(Asset).where(Asset.id == asset_id).values(deleted_at=now))
            await _release_object(session, store, key)
    return len(expired)
