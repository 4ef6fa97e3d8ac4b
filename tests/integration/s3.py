"""A real S3 for the storage tests: moto's server on loopback, the real s3fs client pointed at it.

As in s3fs's own tests, the server starts once per test module and its state is reset before
each test; every test then gets a bucket of its own. The credentials are dummies passed
explicitly, the AWS config files are hidden and instance metadata is never asked for, so
nothing here reaches beyond 127.0.0.1.

Import the fixtures into a test module by their function names (`from tests.integration.s3 import
store_fixture`); pytest knows them by the `name` given, so test arguments shadow no import.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer

from storage.objects import ObjectStore

REGION = "us-east-1"
ACCESS_KEY_ID = "daygen-test-key"
SECRET_ACCESS_KEY = "daygen-test-secret"


def s3_store(endpoint_url: str, bucket: str) -> ObjectStore:
    return ObjectStore(
        f"s3://{bucket}",
        endpoint_url=endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )


def s3_location(store: ObjectStore, key: str) -> dict[str, str]:
    """Bucket and Key of an object, as boto calls want them."""
    bucket, s3_key, _ = store.fs.split_path(f"{store.root}/{key}")
    return {"Bucket": bucket, "Key": s3_key}


def head_object(store: ObjectStore, key: str) -> dict:
    """S3's own HEAD answer for an object, through the store's client (no listing cache)."""
    return store.fs.call_s3("head_object", **s3_location(store, key))


@pytest.fixture(scope="module", name="moto_endpoint")
def moto_endpoint_fixture() -> Iterator[str]:
    """The URL of a moto S3 server on a free loopback port, for the module's tests."""
    env = pytest.MonkeyPatch()
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env.setenv("AWS_CONFIG_FILE", os.devnull)
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.delenv(name, raising=False)
    requests_log = logging.getLogger("werkzeug")  # moto's server logs every request
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        requests_log.setLevel(level)
        env.undo()


@pytest.fixture(name="s3_bucket_store")
def s3_bucket_store_fixture(moto_endpoint: str) -> ObjectStore:
    """A store over a new, empty bucket of a freshly reset moto."""
    httpx.post(f"{moto_endpoint}/moto-api/reset", trust_env=False).raise_for_status()
    store = s3_store(moto_endpoint, f"daygen-test-{uuid.uuid4().hex[:16]}")
    store.fs.call_s3("create_bucket", Bucket=store.root)
    store.fs.invalidate_cache()  # s3fs instances are shared between stores with the same options
    return store


@pytest.fixture(name="store", params=["local", "s3"])
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same store interface over the local disk and over S3."""
    if request.param == "local":
        return ObjectStore(f"file://{tmp_path / 'objects'}")
    return request.getfixturevalue("s3_bucket_store")
