"""Cursor pages: ask the query for one row more than the page, and that row says whether another page follows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Protocol, TypeVar

from fastapi import Query

# A list route's query parameters: `?limit=` (1..100) and `?cursor=` (the last id of the page before).
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[uuid.UUID | None, Query()]


class HasId(Protocol):
    id: uuid.UUID


Row = TypeVar("Row", bound=HasId)


def split_page(rows: Sequence[Row], limit: int) -> tuple[Sequence[Row], str | None]:
    """The page's rows and the cursor of the next page (None on the last); `rows` holds up to limit + 1."""
    page = rows[:limit]
    return page, (str(page[-1].id) if len(rows) > limit else None)
