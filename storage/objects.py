"""The object store: one interface over fsspec for `file://` and `s3://` URLs.

Objects are content-addressed (`assets/ab/<sha256>.<ext>`): a key never changes content,
so it can be cached forever, and storing the same bytes twice stores nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CACHE_FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int
    content_type: str


def content_key(sha256: str, content_type: str) -> str:
    return f"assets/{sha256[:2]}/{sha256}.{EXTENSIONS.get(content_type, 'bin')}"


class ObjectStore:
    def __init__(self, url: str, *, endpoint_url: str | None = None) -> None:
        options: dict = {}
        if url.startswith("s3://"):
            if endpoint_url:
                options["endpoint_url"] = endpoint_url
        else:
            options["auto_mkdir"] = True
        self.fs, root = url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)

    def _path(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError("invalid object key")
        return f"{self.root}/{key}"

    def _put_chunks(self, chunks: Iterable[bytes], content_type: str) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        tmp = self._path(f"tmp/{uuid.uuid4().hex}")
        try:
            with self.fs.open(tmp, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            key = content_key(sha, content_type)
            if self.fs.exists(self._path(key)):
                self.fs.rm(tmp)
            else:
                self.fs.mv(tmp, self._path(key))
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return StoredObject(key=key, sha256=sha, size=size, content_type=content_type)

    async def put_bytes(self, data: bytes, content_type: str) -> StoredObject:
        chunk = 1 << 20
        parts = (data[i : i + chunk] for i in range(0, len(data), chunk))
        return await asyncio.to_thread(self._put_chunks, parts, content_type)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.fs.exists, self._path(key))

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(self.fs.size, self._path(key))

    async def read_chunks(self, key: str, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream an object in chunks so serving it costs constant memory."""
        handle = await asyncio.to_thread(self.fs.open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def check(self) -> None:
        """Readiness: the store's root must be listable (and, on local disk, exist)."""

        def probe() -> None:
            if self.is_local:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.ls(self.root, detail=False)

        await asyncio.to_thread(probe)
