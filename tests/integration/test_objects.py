"""The object store, on the local disk and on S3 (moto): the same tests, both backends.

Content-addressed keys, create-only puts, streamed writes that leave nothing behind when they
fail, ranged reads, info, delete, key hygiene and readiness; then what only S3 has (object
headers, presigned URLs) and what only the local disk has.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from daygen.errors import PayloadTooLarge
from daygen.settings import Settings
from storage.objects import CACHE_FOREVER, ObjectStore
from tests.conftest import free_port
from tests.integration.s3 import (  # noqa: F401 (the *_fixture names register fixtures)
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    head_object,
    moto_endpoint_fixture,
    s3_bucket_store_fixture,
    s3_location,
    s3_store,
    store_fixture,
)

MIB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_all(store: ObjectStore, key: str, **kwargs) -> bytes:
    return b"".join([chunk async for chunk in store.read_chunks(key, **kwargs)])


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def temporary_objects(store: ObjectStore) -> list[str]:
    store.fs.invalidate_cache()  # s3fs caches listings; ask the store itself
    return store.fs.find(f"{store.root}/tmp")


def local_path(store: ObjectStore, key: str) -> Path:
    return Path(f"{store.root}/{key}")


# --- content-addressed writes -------------------------------------------------------------


async def test_bytes_are_filed_under_their_sha256(store):
    data = b"\x89PNG fake but fine" * 1000
    sha = sha256(data)

    stored = await store.put_bytes(data, "image/png")

    assert stored.key == f"assets/{sha[:2]}/{sha}.png"
    assert (stored.sha256, stored.size, stored.content_type) == (sha, len(data), "image/png")
    assert await read_all(store, stored.key, chunk_size=1000) == data
    assert temporary_objects(store) == []


@pytest.mark.parametrize(
    "size",
    [1000, 512 * 1024, 3 * MIB],
    ids=["kept in memory, under 256 KiB", "kept in memory, over 256 KiB", "written out as it streams"],
)
async def test_the_key_is_known_once_the_writer_is_closed_before_it_is_filed(store, size):
    # Uploads lock the key (against a concurrent delete of the same bytes) before they commit.
    data = os.urandom(size)
    async with store.writer("image/png") as writer:
        async for chunk in in_chunks(data, 64 * 1024):
            await writer.write(chunk)
        await writer.close()
        key = writer.key
        assert not await store.exists(key)

        stored = await writer.commit()

    assert key == stored.key == f"assets/{sha256(data)[:2]}/{sha256(data)}.png"
    assert await read_all(store, key, chunk_size=MIB) == data
    assert temporary_objects(store) == []


async def test_a_stream_is_filed_under_the_sha256_of_all_its_chunks(store):
    chunks = [b"RIFF", b"\x00" * 4, b"WEBPVP8 ", b"pixels" * 100]
    data = b"".join(chunks)

    async def upload() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    stored = await store.put_stream(upload(), "image/webp")

    assert stored.key == f"assets/{sha256(data)[:2]}/{sha256(data)}.webp"
    assert stored.size == len(data)
    assert await read_all(store, stored.key) == data


async def test_storing_the_same_bytes_twice_creates_nothing_new(store):
    if not store.is_local:  # every write to a versioned bucket is a new version: count them
        store.fs.call_s3("put_bucket_versioning", Bucket=store.root, VersioningConfiguration={"Status": "Enabled"})
    first = await store.put_bytes(b"same", "image/webp")
    before = await store.info(first.key)
    mtime_ns = local_path(store, first.key).stat().st_mtime_ns if store.is_local else None

    second = await store.put_bytes(b"same", "image/webp")

    assert second == first
    assert await store.info(first.key) == before
    if store.is_local:
        assert local_path(store, first.key).stat().st_mtime_ns == mtime_ns
    else:
        where = s3_location(store, first.key)
        versions = store.fs.call_s3("list_object_versions", Bucket=where["Bucket"], Prefix=where["Key"])
        assert len(versions["Versions"]) == 1
    assert temporary_objects(store) == []


async def test_two_uploads_of_the_same_bytes_at_once_end_as_one_object(store):
    data = b"\xff\xd8\xff twice at once" * 100

    first, second = await asyncio.gather(store.put_bytes(data, "image/jpeg"), store.put_bytes(data, "image/jpeg"))

    assert first == second
    assert await read_all(store, first.key) == data
    assert temporary_objects(store) == []


async def test_a_multi_megabyte_upload_streams_in_small_chunks_and_reads_back_identical(store):
    data = os.urandom(12 * MIB + 12345)  # S3: three parts of a multipart upload

    stored = await store.put_stream(in_chunks(data, 4096), "image/png", max_bytes=13 * MIB)

    assert (stored.sha256, stored.size) == (sha256(data), len(data))
    assert (await store.info(stored.key)).size == len(data)
    assert sha256(await read_all(store, stored.key)) == sha256(data)
    assert temporary_objects(store) == []


# --- writes that fail leave nothing behind ------------------------------------------------


async def test_an_upload_over_the_limit_is_refused_and_leaves_no_temporary_object(store):
    with pytest.raises(PayloadTooLarge) as refused:
        async with store.writer("image/png", max_bytes=2 * MIB) as writer:
            async for chunk in in_chunks(b"x" * (3 * MIB), 256 * 1024):
                await writer.write(chunk)
            await writer.commit()

    assert refused.value.code == "payload_too_large"
    assert writer.size <= 2 * MIB
    assert temporary_objects(store) == []
    assert not await store.exists(writer.key)


async def test_put_stream_refuses_an_upload_over_the_limit(store):
    with pytest.raises(PayloadTooLarge):
        await store.put_stream(in_chunks(b"y" * 5000, 1000), "image/png", max_bytes=4999)

    assert temporary_objects(store) == []


async def test_an_error_inside_the_writer_removes_the_temporary_object(store):
    with pytest.raises(RuntimeError, match="the image is no good"):
        async with store.writer("image/png") as writer:
            await writer.write(b"z" * (MIB + 1))
            await writer.close()
            assert await store.exists(writer.tmp_key)  # complete, as the upload checks read it
            raise RuntimeError("the image is no good")

    assert not await store.exists(writer.tmp_key)
    assert not await store.exists(writer.key)
    assert temporary_objects(store) == []


# --- reads --------------------------------------------------------------------------------

OBJECT = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
END = len(OBJECT)

RANGES = {
    "the first bytes": (0, 10),
    "a slice across many chunks": (100, 1000),
    "a slice ending at the last byte": (END - 300, 300),
    "the last byte alone": (END - 1, 1),
    "from an offset to the end": (5000, None),
    "a length running past the end stops at the end": (END - 10, 100),
    "a start at the end returns nothing": (END, None),
    "a start beyond the end returns nothing": (END + 100, 10),
}


@pytest.mark.parametrize(("start", "length"), list(RANGES.values()), ids=list(RANGES))
async def test_a_ranged_read_returns_exactly_that_slice(store, start, length):
    stored = await store.put_bytes(OBJECT, "image/png")

    got = await read_all(store, stored.key, start=start, length=length, chunk_size=64)

    assert got == OBJECT[start : None if length is None else start + length]


async def test_info_gives_the_size_and_a_timezone_aware_modification_time(store):
    stored = await store.put_bytes(b"info" * 25, "image/png")

    info = await store.info(stored.key)

    assert info.size == 100
    assert info.last_modified.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - info.last_modified) < timedelta(minutes=5)


async def test_a_missing_object_is_file_not_found(store):
    key = f"assets/00/{'0' * 64}.png"

    assert not await store.exists(key)
    with pytest.raises(FileNotFoundError):
        await store.info(key)
    with pytest.raises(FileNotFoundError):
        await read_all(store, key)


async def test_a_directory_is_not_an_object(store):
    stored = await store.put_bytes(b"in a folder", "image/png")

    with pytest.raises(FileNotFoundError):
        await store.info(stored.key.rpartition("/")[0])


# --- delete -------------------------------------------------------------------------------


async def test_delete_removes_the_object_and_is_harmless_twice(store):
    stored = await store.put_bytes(b"short-lived", "image/png")

    await store.delete(stored.key)

    assert not await store.exists(stored.key)
    with pytest.raises(FileNotFoundError):
        await store.info(stored.key)
    await store.delete(stored.key)


async def test_deleted_bytes_can_be_stored_again(store):
    stored = await store.put_bytes(b"back again", "image/png")
    await store.delete(stored.key)

    again = await store.put_bytes(b"back again", "image/png")

    assert again == stored
    assert await read_all(store, again.key) == b"back again"


# --- keys ---------------------------------------------------------------------------------

BAD_KEYS = {
    "a parent step": "../secret",
    "a parent step inside": "assets/../../etc/passwd",
    "a leading slash": "/etc/passwd",
    "an empty part": "assets//x.png",
    "a trailing slash": "assets/ab/",
    "a dot part": "assets/./x.png",
    "a backslash": "assets\\..\\x.png",
    "nothing at all": "",
}


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
async def test_keys_that_could_escape_the_store_are_refused(store, key):
    with pytest.raises(ValueError):
        await store.exists(key)
    with pytest.raises(ValueError):
        await store.info(key)
    with pytest.raises(ValueError):
        await store.delete(key)
    with pytest.raises(ValueError):
        await read_all(store, key)
    with pytest.raises(ValueError):
        store.open_sync(key)


# --- readiness ----------------------------------------------------------------------------


async def test_the_readiness_check_passes_on_a_reachable_store(store):
    await store.check()
    await store.put_bytes(b"not empty any more", "image/png")
    await store.check()


@pytest.fixture(params=["local", "s3"])
def unreachable_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> ObjectStore:
    if request.param == "local":
        (tmp_path / "a-file").write_bytes(b"")
        return ObjectStore(f"file://{tmp_path / 'a-file' / 'objects'}")
    # Nothing listens on a just-freed loopback port: refused at once. One attempt, not
    # botocore's five with back-off (which takes about 10 s).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return s3_store(f"http://127.0.0.1:{free_port()}", "daygen-unreachable")


async def test_the_readiness_check_fails_on_an_unreachable_store(unreachable_store):
    with pytest.raises(Exception) as failed:  # noqa: B017 (each backend fails its own way)
        await asyncio.wait_for(unreachable_store.check(), timeout=5)

    assert not isinstance(failed.value, TimeoutError)


async def test_the_readiness_check_fails_when_the_bucket_does_not_exist(moto_endpoint):
    with pytest.raises(FileNotFoundError):
        await s3_store(moto_endpoint, "daygen-no-such-bucket").check()


async def test_the_readiness_check_asks_s3_every_time_not_its_listing_cache(s3_bucket_store):
    store = s3_bucket_store
    stored = await store.put_bytes(b"listed", "image/png")
    await store.check()  # lists the bucket: s3fs caches non-empty listings

    store.fs.call_s3("delete_object", **s3_location(store, stored.key))
    store.fs.call_s3("delete_bucket", Bucket=store.root)

    with pytest.raises(FileNotFoundError):
        await store.check()


# --- only on S3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 6 * MIB], ids=["one-shot put", "multipart upload"])
async def test_s3_objects_carry_their_content_type_and_are_cacheable_forever(s3_bucket_store, size):
    store = s3_bucket_store
    stored = await store.put_stream(in_chunks(os.urandom(size), 64 * 1024), "image/webp")

    head = head_object(store, stored.key)

    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == CACHE_FOREVER == "public, max-age=31536000, immutable"
    assert head["ContentLength"] == size
    assert store.fs.info(f"{store.root}/{stored.key}")["ContentType"] == "image/webp"


async def test_a_large_upload_goes_up_to_s3_in_parts_rather_than_whole_from_memory(s3_bucket_store):
    store = s3_bucket_store
    async with store.writer("image/png") as writer:
        async for chunk in in_chunks(os.urandom(12 * MIB), 64 * 1024):
            await writer.write(chunk)
        await writer.close()

        etag = head_object(store, writer.tmp_key)["ETag"].strip('"')

    assert etag.endswith("-3")  # a multipart upload: two 5 MiB parts and the rest
    assert temporary_objects(store) == []


async def test_a_presigned_url_downloads_the_bytes_with_a_plain_get(s3_bucket_store):
    store = s3_bucket_store
    data = b"\x89PNG presigned" * 500
    stored = await store.put_bytes(data, "image/png")

    url = await store.presigned_url(stored.key, 600)

    async with httpx.AsyncClient(trust_env=False) as client:  # straight to moto, no proxy
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"


async def test_presigned_urls_are_signed_with_sigv4_for_the_stores_key_and_region(s3_bucket_store):
    store = s3_bucket_store
    stored = await store.put_bytes(b"signed", "image/png")

    url = urlsplit(await store.presigned_url(stored.key, 600))

    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    assert url.path == f"/{store.root}/{stored.key}"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "600"
    assert query["X-Amz-Credential"].startswith(f"{ACCESS_KEY_ID}/")
    assert query["X-Amz-Credential"].endswith(f"/{REGION}/s3/aws4_request")
    assert len(query["X-Amz-Signature"]) == 64
    assert SECRET_ACCESS_KEY not in url.geturl()


async def test_a_store_made_from_settings_reaches_the_same_bucket(s3_bucket_store, moto_endpoint):
    settings = Settings(
        _env_file=None,
        storage_url=f"s3://{s3_bucket_store.root}",
        s3_endpoint_url=moto_endpoint,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
    )

    stored = await ObjectStore.from_settings(settings).put_bytes(b"from settings", "image/png")

    assert await read_all(s3_bucket_store, stored.key) == b"from settings"


# --- only on the local disk ---------------------------------------------------------------


async def test_the_local_store_has_no_presigned_urls(tmp_path):
    store = ObjectStore(f"file://{tmp_path}")
    stored = await store.put_bytes(b"local", "image/png")

    with pytest.raises(ValueError):
        await store.presigned_url(stored.key, 600)


async def test_the_readiness_check_creates_a_missing_local_root(tmp_path):
    store = ObjectStore(f"file://{tmp_path / 'new-root'}")

    await store.check()

    assert (tmp_path / "new-root").is_dir()


async def test_a_store_made_from_settings_writes_to_the_local_disk(tmp_path):
    settings = Settings(_env_file=None, storage_url=f"file://{tmp_path / 'objects'}")

    stored = await ObjectStore.from_settings(settings).put_bytes(b"from settings", "image/png")

    assert (tmp_path / "objects" / stored.key).read_bytes() == b"from settings"
