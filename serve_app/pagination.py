"""Cursor pages: ask the query for one row more than the page, and that row says whether another page follows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol, TypeVar


class HasId(Protocol):
    id: uuid.UUID


Row = TypeVar("Row", bound=HasId)


def split_page(rows: Sequence[Row], limit: int) -> tuple[Sequence[Row], str | None]:
    """The page's rows and the cursor of the next page (None on the last); `rows` holds up to limit + 1."""
    page = rows[:limit]
    return page, (str(page[-1].id) if len(rows) > limit else None)
