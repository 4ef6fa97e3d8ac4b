"""The object store: one interface over fsspec for `file://` and `s3://` URLs.

Objects are content-addressed (`assets/ab/<sha256>.<ext>`): a key never changes content, so
it can be cached forever, and storing the same bytes twice stores nothing new. Writes stream
through a temporary object while hashing, so no upload over a write buffer (1 MiB) is ever held
in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from daygen.errors import PayloadTooLarge

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {ext: ctype for ctype, ext in EXTENSIONS.items()}
CACHE_FOREVER = "public, max-age=31536000, immutable"
WRITE_BUFFER = 1 << 20
S3_PART_SIZE = 5 << 20
# Work on an object this small is done on the event loop: a hop to a worker thread and back costs
# about 0.2 ms of CPU here, as much as checking a 256 KB image or filing it on the local disk, and
# a provider step took two (bench/provider_step.py: 1.5-1.7 ms of CPU a step with them, 1.0-1.2 without).
INLINE_BYTES = 256 << 10


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    last_modified: datetime


def content_key(sha256: str, content_type: str) -> str:
    return f"assets/{sha256[:2]}/{sha256}.{EXTENSIONS.get(content_type, 'bin')}"


class ObjectStore:
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        options: dict[str, Any] = {}
        if url.startswith("s3://"):
            client: dict[str, Any] = {}
            if endpoint_url:
                client["endpoint_url"] = endpoint_url
            if region:
                client["region_name"] = region
            options["client_kwargs"] = client
            # SigV4 for presigned URLs too: botocore would sign them with SigV2 in us-east-1,
            # which S3 refuses for buckets created since mid-2020 (and R2/MinIO never accepted).
            options["config_kwargs"] = {"signature_version": "s3v4"}
            if access_key_id and secret_access_key:
                options.update(key=access_key_id, secret=secret_access_key)
        else:
            options["auto_mkdir"] = True
        self.fs, root = url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    @classmethod
    def from_settings(cls, settings) -> ObjectStore:
        def secret(value) -> str | None:
            return value.get_secret_value() if value is not None else None

        return cls(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=secret(settings.s3_access_key_id),
            secret_access_key=secret(settings.s3_secret_access_key),
        )

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
            raise ValueError("invalid object key")
        return f"{self.root}/{key}"

    def _open_write(self, key: str, content_type: str) -> IO[bytes]:
        if self.is_local:
            return self.fs.open(self._path(key), "wb")
        # Parts of the S3 minimum size: s3fs would otherwise buffer up to 50 MB of an upload in memory.
        return self.fs.open(
            self._path(key), "wb", block_size=S3_PART_SIZE, ContentType=content_type, CacheControl=CACHE_FOREVER
        )

    def _put_whole(self, key: str, tmp_key: str, data: bytes, content_type: str) -> None:
        """Blocking: a small object filed under `key` at once, never seen half-written (S3's PUT is
        atomic; on disk it is written under `tmp_key`, then renamed)."""
        if not self.is_local:
            self.fs.pipe_file(self._path(key), data, ContentType=content_type, CacheControl=CACHE_FOREVER)
            return
        with self._open_write(tmp_key, content_type) as handle:
            handle.write(data)
        self.fs.mv(self._path(tmp_key), self._path(key))

    def writer(self, content_type: str, max_bytes: int | None = None) -> ObjectWriter:
        return ObjectWriter(self, content_type, max_bytes)

    async def put_stream(
        self, chunks: AsyncIterable[bytes], content_type: str, max_bytes: int | None = None
    ) -> StoredObject:
        async with self.writer(content_type, max_bytes) as writer:
            async for chunk in chunks:
                await writer.write(chunk)
            return await writer.commit()

    async def put_bytes(self, data: bytes, content_type: str) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), content_type)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.fs.exists, self._path(key))

    async def info(self, key: str) -> ObjectInfo:
        """Size and modification time; FileNotFoundError when there is no such object."""
        path = self._path(key)

        def read() -> ObjectInfo:
            details = self.fs.info(path)
            if details.get("type") == "directory":
                raise FileNotFoundError(key)
            modified = details.get("LastModified") or datetime.fromtimestamp(details["mtime"], UTC)
            return ObjectInfo(size=int(details["size"]), last_modified=modified)

        return await asyncio.to_thread(read)

    def open_sync(self, key: str) -> IO[bytes]:
        """A blocking file object (seekable, ranged reads on S3), for use in a worker thread.

        On S3 each read fetches at most one part-sized block ahead, not s3fs's default 50 MB."""
        if self.is_local:
            return self.fs.open(self._path(key), "rb")
        return self.fs.open(self._path(key), "rb", block_size=S3_PART_SIZE)

    async def read_chunks(
        self, key: str, start: int = 0, length: int | None = None, chunk_size: int = 1 << 18
    ) -> AsyncIterator[bytes]:
        """Stream part or all of an object, so serving it costs constant memory."""
        handle = await asyncio.to_thread(self.open_sync, key)
        try:
            if start:
                await asyncio.to_thread(handle.seek, start)
            left = length
            while left is None or left > 0:
                size = chunk_size if left is None else min(chunk_size, left)
                chunk = await asyncio.to_thread(handle.read, size)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            if self.fs.exists(path):
                self.fs.rm(path)

        await asyncio.to_thread(remove)

    async def presigned_url(self, key: str, expires_in: int) -> str:
        """An expiring GET URL straight from S3 (not for the local disk, which /files signs)."""
        if self.is_local:
            raise ValueError("the local store has no presigned URLs")
        return await asyncio.to_thread(self.fs.sign, self._path(key), expires_in)

    async def check(self) -> None:
        """Readiness: the store's root must be listable (and, on local disk, exist)."""

        def probe() -> None:
            if self.is_local:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.ls(self.root, detail=False, refresh=True)  # ask the store, not s3fs's listing cache

        await asyncio.to_thread(probe)


# Temporary keys are unique by a random prefix drawn once, the process and a counter: a uuid4 each
# (a trip to the kernel's random source) was a noticeable part of storing a provider's output.
_TMP_PREFIX = uuid.uuid4().hex[:16]
_tmp_numbers = itertools.count()


class ObjectWriter:
    """Streams bytes into a temporary object, hashing and counting as they pass;
    `commit` files them under their content key, `abort` (or an error) removes them.

    Full buffers are hashed and written in a worker thread while the next one fills (one in
    flight at a time, so memory stays at two buffers): hashing is the slowest part of an upload.
    An object that never fills a buffer (most images) stays in memory: hashed in place, filed in one
    go (on the event loop when it is small and the store is the local disk).
    """

    def __init__(self, store: ObjectStore, content_type: str, max_bytes: int | None) -> None:
        self.store = store
        self.content_type = content_type
        self.max_bytes = max_bytes
        self.tmp_key = f"tmp/{_TMP_PREFIX}-{os.getpid()}-{next(_tmp_numbers)}"
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._finished = False
        self._hashed = False  # a small object's buffer, once close() has hashed it

    @property
    def sha256(self) -> str:
        """Only complete after `close`."""
        return self._digest.hexdigest()

    @property
    def key(self) -> str:
        return content_key(self.sha256, self.content_type)

    @property
    def buffered(self) -> bytes | None:
        """The whole object while none of it has been written out yet, else None."""
        return bytes(self._buffer) if self._file is None and self._in_flight is None else None

    async def write(self, chunk: bytes) -> None:
        if self.max_bytes is not None and self.size + len(chunk) > self.max_bytes:
            raise PayloadTooLarge(f"the upload is over {self.max_bytes} bytes")
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= WRITE_BUFFER:
            await self._flush()

    def _write_block(self, data: bytes) -> None:
        if self._file is None:
            self._file = self.store._open_write(self.tmp_key, self.content_type)
        self._digest.update(data)
        self._file.write(data)

    async def _settle_in_flight(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def _flush(self) -> None:
        await self._settle_in_flight()
        data, self._buffer = bytes(self._buffer), bytearray()
        self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._write_block, data))

    async def close(self) -> None:
        """Finish the object: `sha256` and `key` are complete after it. A large one is then in its
        temporary object (to read back, e.g. to verify it); a small one stays in `buffered`."""
        if self._file is None and self._in_flight is None:
            if not self._hashed:  # under a millisecond for a buffer's worth: not worth a thread hop
                self._digest.update(self._buffer)
                self._hashed = True
            return
        if self._buffer:
            await self._flush()
        await self._settle_in_flight()
        if self._file is not None and not self._file.closed:
            await asyncio.to_thread(self._file.close)

    async def commit(self) -> StoredObject:
        await self.close()
        whole = self.buffered
        if whole is not None and self.store.is_local and len(whole) <= INLINE_BYTES:
            self._file_whole(whole)
        elif whole is not None:  # S3 is a network call: never on the event loop
            await asyncio.to_thread(self._file_whole, whole)
        else:
            await asyncio.to_thread(self._file_written)
        self._finished = True
        return StoredObject(key=self.key, sha256=self.sha256, size=self.size, content_type=self.content_type)

    def _file_whole(self, data: bytes) -> None:
        if not self.store.fs.exists(self.store._path(self.key)):  # the same bytes are stored already
            self.store._put_whole(self.key, self.tmp_key, data, self.content_type)

    def _file_written(self) -> None:
        tmp, final = self.store._path(self.tmp_key), self.store._path(self.key)
        if self.store.fs.exists(final):
            self.store.fs.rm(tmp)
        else:
            self.store.fs.mv(tmp, final)

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(Exception):
            await self._settle_in_flight()
        if self._file is not None and not self._file.closed:
            await asyncio.to_thread(self._file.close)
        await self.store.delete(self.tmp_key)

    async def __aenter__(self) -> ObjectWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.abort()
