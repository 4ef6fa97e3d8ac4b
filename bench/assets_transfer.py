"""Benchmark: upload and download a large image through the API, watching the server's memory.

Starts its own stack like the tests do (the machine's Postgres/Redis when
DAYGEN_TEST_DATABASE_URL / DAYGEN_TEST_REDIS_URL are set, else embedded servers), writes a
~200 MiB PNG to a temp dir with a streaming PNG writer (never holding it in memory), then:

1. uploads it to POST /v1/assets as a raw streamed body,
2. downloads it back from the returned URL (GET /files/...), checking the sha256,
3. uploads it again as multipart/form-data (same bytes, so the same content-addressed key).

While that runs, a thread samples the RSS of the Serve replica of `daygen-api`, of the HAProxy
in front of it and of Serve's backup proxy actor every ~20 ms. Sizes are MiB (2**20 bytes); throughput is MiB/s.
Target: RSS growth under 50 MiB and throughput at least 100 MiB/s on the local disk.
Exits 1 when a target is missed.

    .venv/bin/python bench/assets_transfer.py --size-mb 200 --chunk-kb 1024
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.runtime import deploy, start_ray  # noqa: E402
from daygen.settings import Settings  # noqa: E402
from tests.conftest import free_port, private_database, service_urls  # noqa: E402

MiB = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_WIDTH = 4096  # 16-bit RGBA: 8 bytes a pixel, so 200 MiB is ~26 M pixels (Pillow warns over ~89 M)
BYTES_PER_PIXEL = 8
IDAT_BYTES = 1 * MiB  # Pillow's verify() reads one chunk at a time: keep chunks small
REPLICA_MARK = "ServeReplica:daygen:daygen-api"
PROXY_MARK = "ProxyActor"
HAPROXY_MARK = "haproxy"
THROUGHPUT_TARGET = 100.0  # MiB/s
RSS_TARGET = 50.0  # MiB


# --- the test file ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def write_png(path: Path, size_bytes: int) -> tuple[int, int, str]:
    """A valid PNG of random 16-bit RGBA pixels of about size_bytes, written row by row.

    Random pixels barely compress, so the rows go through zlib at level 0 (stored blocks):
    the file is as big as its pixels and costs little CPU. Returns (width, height, sha256).
    """
    row_bytes = 1 + PNG_WIDTH * BYTES_PER_PIXEL  # a filter byte (0: none) then the pixels
    height = max(1, size_bytes // row_bytes)
    digest = hashlib.sha256()
    compressor = zlib.compressobj(level=0)
    pending = bytearray()
    with path.open("wb") as out:

        def emit(data: bytes) -> None:
            out.write(data)
            digest.update(data)

        emit(PNG_SIGNATURE)
        # width, height, bit depth 16, colour type 6 (RGBA), deflate, adaptive filters, no interlace
        emit(_chunk(b"IHDR", struct.pack(">IIBBBBB", PNG_WIDTH, height, 16, 6, 0, 0, 0)))
        for _ in range(height):
            pending += compressor.compress(b"\x00" + os.urandom(row_bytes - 1))
            while len(pending) >= IDAT_BYTES:
                emit(_chunk(b"IDAT", bytes(pending[:IDAT_BYTES])))
                del pending[:IDAT_BYTES]
        pending += compressor.flush()
        if pending:
            emit(_chunk(b"IDAT", bytes(pending)))
        emit(_chunk(b"IEND", b""))
    return PNG_WIDTH, height, digest.hexdigest()


def file_chunks(path: Path, chunk_size: int, pace: float | None = None) -> Iterator[bytes]:
    """The file in chunks; with `pace` (bytes/s), no faster than that (to probe back-pressure)."""
    started, sent = time.perf_counter(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            if pace:
                ahead = sent / pace - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            sent += len(chunk)
            yield chunk


def multipart_chunks(
    path: Path, boundary: str, chunk_size: int, pace: float | None = None
) -> tuple[int, Iterator[bytes]]:
    """A streamed multipart/form-data body with the file as its `file` part, and its length."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="bench.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from file_chunks(path, chunk_size, pace)
        yield tail

    return len(head) + path.stat().st_size + len(tail), body()


# --- the server's memory ---------------------------------------------------------------------


@dataclass
class Track:
    """One memory figure of one process: its baseline, overall peak, latest value, and per phase."""

    baseline: int = 0
    peak: int = 0
    last: int = 0
    phase_start: int = 0
    phase_peak: int = 0

    def update(self, value: int) -> None:
        self.last = value
        self.peak = max(self.peak, value)
        self.phase_peak = max(self.phase_peak, value)

    def reset(self) -> None:
        self.baseline = self.peak = self.phase_start = self.phase_peak = self.last

    def next_phase(self) -> tuple[int, int]:
        ended = (self.phase_start, self.phase_peak)
        self.phase_start = self.phase_peak = self.last
        return ended


@dataclass
class Watched:
    """A server process: its RSS, and its private memory (RSS minus shared pages, which leaves
    out the pages of Ray's shared-memory object store and of mapped files)."""

    label: str
    process: psutil.Process
    rss: Track = field(default_factory=Track)
    private: Track = field(default_factory=Track)


@dataclass
class RssSampler:
    """Samples the memory of some processes every `interval` seconds in a background thread.

    Keeps each process's overall baseline and peak, and per phase (`phase()` starts the next
    one) the value at its start and its peak, so growth can be pinned on upload or download."""

    watched: list[Watched]
    interval: float = 0.02
    samples: int = 0
    total: Track = field(default_factory=Track)
    phases: list[tuple[str, dict[str, tuple[tuple[int, int], tuple[int, int]]]]] = field(default_factory=list)
    _phase: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        with self._lock:
            for w in self.watched:
                with contextlib.suppress(psutil.Error):
                    info = w.process.memory_info()
                    w.rss.update(info.rss)
                    w.private.update(info.rss - info.shared)
            self.total.update(sum(w.rss.last for w in self.watched))
            self.samples += 1

    def start(self) -> None:
        self._sample()
        for w in self.watched:
            w.rss.reset()
            w.private.reset()
        self.total.reset()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sample()

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def _close_phase(self) -> None:
        ended = {w.label: (w.rss.next_phase(), w.private.next_phase()) for w in self.watched}
        if self._phase is not None:
            self.phases.append((self._phase, ended))

    def phase(self, name: str) -> None:
        self._sample()
        with self._lock:
            self._close_phase()
            self._phase = name

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._close_phase()


def serve_processes() -> list[Watched]:
    """This driver's Serve replica of daygen-api, the HAProxy in front of it and Serve's backup
    proxy actor. Ray's processes are our descendants, so other clusters are never picked up."""
    found: dict[str, Watched] = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            for label, mark in (("replica", REPLICA_MARK), ("haproxy", HAPROXY_MARK), ("proxy", PROXY_MARK)):
                if label not in found and mark in title and (label != "haproxy" or proc.name() == "haproxy"):
                    found[label] = Watched(label, proc)
    missing = {"replica", "haproxy"} - set(found)
    if missing:
        raise RuntimeError(f"could not find the {', '.join(sorted(missing))} process")
    return [found[label] for label in ("replica", "haproxy", "proxy") if label in found]


# --- the run ---------------------------------------------------------------------------------


def rate(label: str, size: int, seconds: float) -> float:
    mib_s = size / MiB / seconds
    print(f"{label}: {size / MiB:.1f} MiB in {seconds:.2f} s = {mib_s:.1f} MiB/s", flush=True)
    return mib_s


def run(
    base_url: str,
    path: Path,
    sha256: str,
    chunk_size: int,
    multipart: bool,
    pace: float | None,
) -> bool:
    """The transfers and the report; True when both targets are met."""
    size = path.stat().st_size
    timeout = httpx.Timeout(300, connect=10)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        signup = client.post(
            "/v1/auth/signup", json={"email": f"bench-{secrets.token_hex(4)}@example.com", "password": "benchmark!"}
        )
        signup.raise_for_status()
        auth = {"Authorization": f"Bearer {signup.json()['accessToken']}"}

        sampler = RssSampler(serve_processes())
        sampler.start()
        rates: list[float] = []
        try:
            sampler.phase("upload raw")
            started = time.perf_counter()
            response = client.post(
                "/v1/assets",
                content=file_chunks(path, chunk_size, pace),
                headers={**auth, "Content-Type": "image/png", "Content-Length": str(size)},
            )
            elapsed = time.perf_counter() - started
            if response.status_code != 201:
                raise RuntimeError(f"raw upload failed: {response.status_code} {response.text[:500]}")
            asset = response.json()
            rates.append(rate("upload raw", size, elapsed))
            if asset["sha256"] != sha256 or asset["size"] != size:
                raise RuntimeError(f"the server stored {asset['size']} bytes with sha256 {asset['sha256']}")

            sampler.phase("download")
            digest, received = hashlib.sha256(), 0
            started = time.perf_counter()
            with client.stream("GET", asset["url"]) as download:
                download.raise_for_status()
                for chunk in download.iter_raw(chunk_size):
                    digest.update(chunk)
                    received += len(chunk)
            elapsed = time.perf_counter() - started
            rates.append(rate("download", received, elapsed))
            if received != size or digest.hexdigest() != sha256:
                raise RuntimeError(f"downloaded {received} bytes with sha256 {digest.hexdigest()}, expected {sha256}")

            if multipart:
                sampler.phase("upload multipart")
                boundary = uuid.uuid4().hex
                length, body = multipart_chunks(path, boundary, chunk_size, pace)
                started = time.perf_counter()
                response = client.post(
                    "/v1/assets",
                    content=body,
                    headers={
                        **auth,
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Content-Length": str(length),
                    },
                )
                elapsed = time.perf_counter() - started
                if response.status_code != 201:
                    raise RuntimeError(f"multipart upload failed: {response.status_code} {response.text[:500]}")
                rates.append(rate("upload multipart", size, elapsed))
                if response.json()["url"] != asset["url"]:
                    raise RuntimeError("the multipart upload was stored under another key")
        finally:
            sampler.stop()

    def mib(value: int) -> str:
        return f"{value / MiB:.1f}"

    for name, by_label in sampler.phases:
        parts = [
            f"{label} +{mib(rss[1] - rss[0])} (private +{mib(private[1] - private[0])})"
            for label, (rss, private) in by_label.items()
        ]
        print(f"  {name}: RSS growth over the phase's start, MiB: {', '.join(parts)}")
    growths = []
    for w in sampler.watched:
        growths.append((w.rss.peak - w.rss.baseline) / MiB)
        print(
            f"{w.label} RSS (pid {w.process.pid}): baseline {mib(w.rss.baseline)} MiB, peak {mib(w.rss.peak)} MiB, "
            f"growth {mib(w.rss.peak - w.rss.baseline)} MiB, end {mib(w.rss.last)} MiB; "
            f"private: baseline {mib(w.private.baseline)}, peak {mib(w.private.peak)}, "
            f"growth {mib(w.private.peak - w.private.baseline)} MiB"
        )
    total_growth = (sampler.total.peak - sampler.total.baseline) / MiB
    growths.append(total_growth)
    if len(sampler.watched) > 1:
        print(
            f"all watched RSS: baseline {mib(sampler.total.baseline)} MiB, peak {mib(sampler.total.peak)} MiB, "
            f"growth {total_growth:.1f} MiB ({sampler.samples} samples)"
        )
    fast = min(rates) >= THROUGHPUT_TARGET
    largest = max(growths)
    lean = largest < RSS_TARGET
    print(
        f"targets: throughput >= {THROUGHPUT_TARGET:.0f} MiB/s: {'yes' if fast else 'no'} "
        f"(slowest {min(rates):.1f} MiB/s); RSS growth < {RSS_TARGET:.0f} MiB: {'yes' if lean else 'no'} "
        f"(largest {largest:.1f} MiB)",
        flush=True,
    )
    return fast and lean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=200, help="size of the test image in MiB")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="client read/send chunk size in KiB")
    parser.add_argument("--no-multipart", action="store_true", help="skip the multipart upload")
    parser.add_argument(
        "--pace-mb-s", type=float, default=None, help="send uploads no faster than this (MiB/s), to probe back-pressure"
    )
    args = parser.parse_args()
    # A plain SIGTERM would skip the clean-up below (Ray, the database, the temp dir).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import ray

    size_bytes = int(args.size_mb * MiB)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="daygen-bench-")))
        image = work / "bench.png"
        started = time.perf_counter()
        width, height, sha256 = write_png(image, size_bytes)
        print(
            f"test image: {width}x{height} 16-bit RGBA PNG, {image.stat().st_size / MiB:.1f} MiB "
            f"(written in {time.perf_counter() - started:.1f} s); chunk {args.chunk_kb} KiB; cpus={os.cpu_count()}",
            flush=True,
        )
        pg_url, redis_url = stack.enter_context(service_urls(work))
        database_url = stack.enter_context(private_database(pg_url))
        settings = Settings(
            home=work,
            port=free_port(),
            database_url=database_url,
            redis_url=redis_url,
            redis_namespace=f"daygen-bench-{secrets.token_hex(4)}",
            storage_url=f"file://{work / 'objects'}",
            jwt_secret=secrets.token_urlsafe(32),
            max_upload_bytes=size_bytes + 64 * MiB,
            max_image_pixels=100_000_000,
            ray_dashboard=False,
            log_level="WARNING",
        )
        ray_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dgr-")))
        start_ray(temp_dir=ray_dir, dashboard=False, http_port=settings.port, num_cpus=2, object_store_bytes=200 * MiB)
        stack.callback(ray.shutdown)
        base_url = deploy(settings)
        print(f"serving at {base_url} (HAProxy in front of the replica, docs/ingress.md)", flush=True)
        pace = args.pace_mb_s * MiB if args.pace_mb_s else None
        met = run(base_url, image, sha256, args.chunk_kb * 1024, not args.no_multipart, pace)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
