"""The object store on the local disk: content-addressed keys, create-only puts, streamed reads."""

from __future__ import annotations

import hashlib

import pytest

from storage.objects import ObjectStore


async def test_bytes_are_stored_under_their_sha256(tmp_path):
    store = ObjectStore(f"file://{tmp_path}")
    data = b"\x89PNG fake but fine" * 1000
    stored = await store.put_bytes(data, "image/png")
    sha = hashlib.sha256(data).hexdigest()
    assert stored.key == f"assets/{sha[:2]}/{sha}.png"
    assert (stored.sha256, stored.size) == (sha, len(data))
    assert b"".join([c async for c in store.read_chunks(stored.key, chunk_size=1000)]) == data


async def test_storing_the_same_bytes_twice_writes_nothing_new(tmp_path):
    store = ObjectStore(f"file://{tmp_path}")
    first = await store.put_bytes(b"same", "image/webp")
    path = tmp_path / first.key
    before = path.stat().st_mtime_ns
    second = await store.put_bytes(b"same", "image/webp")
    assert second.key == first.key
    assert path.stat().st_mtime_ns == before
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_keys_cannot_escape_the_store(tmp_path):
    store = ObjectStore(f"file://{tmp_path / 'objects'}")
    with pytest.raises(ValueError):
        await store.exists("../secret")
    with pytest.raises(ValueError):
        await store.exists("/etc/passwd")


async def test_readiness_check_creates_a_missing_local_root(tmp_path):
    store = ObjectStore(f"file://{tmp_path / 'new-root'}")
    await store.check()
    assert (tmp_path / "new-root").is_dir()
