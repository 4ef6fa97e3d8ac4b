"""Deliveries to a real receiver on 127.0.0.1: what it sees, and what we make of its answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
import pytest

from pipelines.webhooks import DeliveryResult, check_target, deliver, new_secret, verify

LOOPBACK = frozenset({"127.0.0.1"})
HOOK_NAME = "hooks.example.test"  # never resolves for real; the tests' resolver pins it to 127.0.0.1
PAYLOAD = {"type": "job.succeeded", "timestamp": "2025-01-02T03:04:05.000Z", "data": {"jobId": "j1", "assets": []}}
MB = 1024 * 1024


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b'{"received":true}'
    endless: bool = False  # stream the body forever, to see the reader stop on its own
    hang: bool = False  # never answer


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request and answers as scripted."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.reply = Reply()
        self.requests: list[Received] = []
        self.bytes_sent = 0
        self.sni: list[str | None] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._exchange(reader, writer, h11.Connection(h11.SERVER))
        except (ConnectionError, ssl.SSLError, h11.ProtocolError):
            pass  # the client hung up, as a capped reader should
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection):
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        assert request is not None
        self.requests.append(
            Received(
                request.method.decode(),
                request.target.decode(),
                {name.decode(): value.decode() for name, value in request.headers},
                body,
            )
        )
        reply = self.reply
        if reply.hang:
            await asyncio.Event().wait()
        length = [] if reply.endless else [("content-length", str(len(reply.body)))]
        await self._send(writer, conn, h11.Response(status_code=reply.status, headers=reply.headers + length))
        chunk = reply.body or b"x"
        while True:
            await self._send(writer, conn, h11.Data(data=chunk))
            if not reply.endless:
                break
        await self._send(writer, conn, h11.EndOfMessage())

    async def _send(self, writer: asyncio.StreamWriter, conn: h11.Connection, event: object) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            self.bytes_sent += len(data)
            await writer.drain()


def pinned_to_loopback(host: str) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver that knows one name, at 127.0.0.1; the tests never ask real DNS."""

    async def resolve(name: str, port: int) -> list[str]:
        if name != host:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return ["127.0.0.1"]

    return resolve


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    server.port = await server.start()  # type: ignore[attr-defined]
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def url(receiver: Receiver, path: str = "/hook") -> str:
    return f"http://127.0.0.1:{receiver.port}{path}"  # type: ignore[attr-defined]


async def send(http: httpx.AsyncClient, to: str, secret: str | None = None, **options) -> DeliveryResult:
    options.setdefault("allowed_hosts", LOOPBACK)
    return await deliver(http, to, secret or new_secret(), "msg_1", PAYLOAD, **options)


async def test_the_receiver_gets_one_signed_json_post_it_can_verify(http, receiver):
    secret = new_secret()
    result = await send(http, url(receiver, "/hook?via=test"), secret, now=lambda: 1_700_000_000)
    assert (result.status, result.ok, result.gone, result.error) == (200, True, False, None)
    assert result.response_excerpt == '{"received":true}'
    [request] = receiver.requests
    assert (request.method, request.target) == ("POST", "/hook?via=test")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["webhook-timestamp"] == "1700000000"
    assert json.loads(request.body) == PAYLOAD
    verify(secret, request.headers, request.body, now=lambda: 1_700_000_100)


async def test_delivery_connects_to_the_checked_address_and_keeps_the_host_name(http, receiver):
    port = receiver.port
    result = await send(
        http,
        f"http://{HOOK_NAME}:{port}/hook",
        allowed_hosts=frozenset({HOOK_NAME}),
        resolve=pinned_to_loopback(HOOK_NAME),
    )
    assert result.ok, result.error
    assert receiver.requests[0].headers["host"] == f"{HOOK_NAME}:{port}"


async def test_a_name_that_rebinds_to_an_internal_address_after_the_check_is_refused_at_delivery(http, receiver):
    answers = [["93.184.215.14"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    target = f"http://{HOOK_NAME}:{receiver.port}/hook"
    await check_target(target, frozenset(), resolve=rebinding)  # when the URL was registered
    result = await send(http, target, allowed_hosts=frozenset(), resolve=rebinding)
    assert (result.status, result.ok) == (None, False)
    assert result.error.startswith("refused:") and "loopback" in result.error
    assert receiver.requests == []


async def test_a_410_means_the_receiver_is_gone(http, receiver):
    receiver.reply = Reply(status=410, body=b"unsubscribed")
    result = await send(http, url(receiver))
    assert (result.status, result.ok, result.gone, result.error) == (410, False, True, "HTTP 410")
    assert result.response_excerpt == "unsubscribed"


async def test_a_429_with_retry_after_seconds_says_how_long_to_wait(http, receiver):
    receiver.reply = Reply(status=429, headers=[("retry-after", "7")])
    result = await send(http, url(receiver))
    assert (result.status, result.ok, result.retry_after) == (429, False, 7.0)


async def test_a_503_with_a_retry_after_date_is_read_relative_to_now(http, receiver):
    now = 1_700_000_000
    later = dt.datetime.fromtimestamp(now + 120, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    receiver.reply = Reply(status=503, headers=[("retry-after", later)])
    result = await send(http, url(receiver), now=lambda: now)
    assert (result.status, result.retry_after, result.error) == (503, 120.0, "HTTP 503")


async def test_a_redirect_is_a_failure_and_is_not_followed(http, receiver):
    receiver.reply = Reply(status=302, headers=[("location", url(receiver, "/elsewhere"))], body=b"")
    result = await send(http, url(receiver))
    assert (result.status, result.ok) == (302, False)
    assert "not followed" in result.error
    assert [request.target for request in receiver.requests] == ["/hook"]


async def test_an_endless_response_body_is_read_only_up_to_the_cap(http, receiver):
    receiver.reply = Reply(body=b"x" * 65536, endless=True)
    result = await send(http, url(receiver), timeout_seconds=10.0, max_response_bytes=64 * 1024)
    assert (result.status, result.ok) == (200, True)
    assert result.response_excerpt == "x" * 500
    assert result.duration_ms < 5000  # it stopped reading; it did not wait for the deadline
    await asyncio.sleep(0.2)  # the receiver notices the hang-up and stops writing
    assert receiver.bytes_sent < 32 * MB


async def test_a_receiver_that_never_answers_times_out_near_the_timeout(http, receiver):
    receiver.reply = Reply(hang=True)
    result = await send(http, url(receiver), timeout_seconds=0.5)
    assert (result.status, result.ok) == (None, False)
    assert result.error == "timed out after 0.5s"
    assert 400 <= result.duration_ms < 2000
    assert len(receiver.requests) == 1


async def test_a_refused_connection_is_a_result_without_status_and_without_the_url(http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await send(http, f"http://127.0.0.1:{port}/hook?token=s3cret-token")
    assert (result.status, result.ok, result.gone) == (None, False, False)
    assert result.error.startswith("could not connect")
    assert "s3cret-token" not in result.error


async def test_an_internal_target_is_refused_without_a_connection(http):
    result = await send(http, "http://10.0.0.1/hook", allowed_hosts=frozenset(), timeout_seconds=0.5)
    assert result.status is None
    assert result.error == "refused: webhookUrl must point at a public address; 10.0.0.1 is a private address"


# --- https: pinned to the checked address, verified against the name in the URL --------------


def certificate_for(name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `name` and its key, as PEM files."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, ssl.SSLContext]]:
    """A receiver with a certificate for HOOK_NAME, and a client context that trusts only it."""
    cert, key = certificate_for(HOOK_NAME, tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = Receiver(tls=server_tls)
    server.port = await server.start()  # type: ignore[attr-defined]
    yield server, ssl.create_default_context(cafile=str(cert))
    await server.stop()


async def test_https_goes_to_the_checked_address_with_the_name_as_sni_and_certificate_name(tls_receiver):
    receiver, trust = tls_receiver
    async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
        result = await send(
            client,
            f"https://{HOOK_NAME}:{receiver.port}/hook",
            allowed_hosts=frozenset({HOOK_NAME}),
            resolve=pinned_to_loopback(HOOK_NAME),
        )
    assert result.ok, result.error
    assert receiver.sni == [HOOK_NAME]
    assert receiver.requests[0].headers["host"] == f"{HOOK_NAME}:{receiver.port}"


async def test_https_to_a_name_the_certificate_does_not_cover_fails_verification(tls_receiver):
    receiver, trust = tls_receiver
    other = "other.example.test"
    async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
        result = await send(
            client,
            f"https://{other}:{receiver.port}/hook",
            allowed_hosts=frozenset({other}),
            resolve=pinned_to_loopback(other),
        )
    assert (result.status, result.ok) == (None, False)
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert receiver.requests == []
