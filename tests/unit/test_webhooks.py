"""Outgoing webhooks without a network: signing, the SSRF guard, the retry schedule, the event body."""

import base64
import hashlib
import hmac
import random
import socket
from datetime import UTC, datetime, timedelta, timezone

import pytest

from daygen.errors import Forbidden, InvalidInput
from pipelines.webhooks import (
    check_target,
    event_payload,
    headers,
    new_secret,
    next_attempt_delay,
    parse_retry_after,
    parse_schedule,
    sign,
    verify,
)

# The published Standard Webhooks vector (standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000
BODY = b'{"type":"job.succeeded","data":{"jobId":"j1"}}'


def at(seconds: float):
    return lambda: seconds


def signed(secret, body=BODY, timestamp=NOW, msg_id="msg_1") -> dict[str, str]:
    return headers(secret, msg_id, timestamp, body)


# --- signing ---------------------------------------------------------------------------------


def test_signing_reproduces_the_published_standard_webhooks_vector():
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signing_matches_an_independent_hmac_over_id_timestamp_and_body():
    secret = new_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_2.1234." + BODY, hashlib.sha256).digest()
    assert sign(secret, "msg_2", 1234, BODY) == "v1," + base64.b64encode(expected).decode()


def test_a_new_secret_is_whsec_and_24_to_32_random_bytes_in_base64():
    made = {new_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_")
        assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) <= 32


def test_a_secret_that_is_not_base64_is_refused():
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_not base64!", "msg_1", NOW, BODY)


def test_headers_carry_id_timestamp_signature_and_json_content_type():
    sent = headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert sent == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
        "content-type": "application/json",
    }


# --- verify ----------------------------------------------------------------------------------


def test_verify_accepts_the_published_vector_at_its_time():
    sent = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": VECTOR_SIGNATURE}
    verify(VECTOR_SECRET, sent, VECTOR_BODY, now=at(VECTOR_TIMESTAMP + 10))


def test_verify_accepts_a_fresh_signature_with_headers_in_any_case():
    secret = new_secret()
    sent = {key.title(): value for key, value in signed(secret).items()}
    verify(secret, sent, BODY, now=at(NOW + 299))


def test_verify_refuses_a_tampered_body():
    secret = new_secret()
    with pytest.raises(Forbidden, match="no webhook signature matches"):
        verify(secret, signed(secret), BODY.replace(b"j1", b"j2"), now=at(NOW))


def test_verify_refuses_a_signature_made_with_another_secret():
    with pytest.raises(Forbidden, match="no webhook signature matches"):
        verify(new_secret(), signed(new_secret()), BODY, now=at(NOW))


@pytest.mark.parametrize("drift", [-301, 301])
def test_verify_refuses_a_timestamp_outside_the_tolerance_either_way(drift):
    secret = new_secret()
    with pytest.raises(Forbidden, match="tolerance"):
        verify(secret, signed(secret), BODY, now=at(NOW + drift))


def test_verify_refuses_missing_or_garbled_headers():
    secret = new_secret()
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        sent = signed(secret)
        del sent[missing]
        with pytest.raises(Forbidden, match="required"):
            verify(secret, sent, BODY, now=at(NOW))
    with pytest.raises(Forbidden, match="whole number"):
        verify(secret, signed(secret) | {"webhook-timestamp": "soon"}, BODY, now=at(NOW))


def test_during_a_rotation_both_secrets_sign_and_a_receiver_on_either_one_accepts():
    old, new = new_secret(), new_secret()
    sent = signed([old, new])
    assert len(sent["webhook-signature"].split(" ")) == 2
    verify(old, sent, BODY, now=at(NOW))
    verify(new, sent, BODY, now=at(NOW))
    with pytest.raises(Forbidden):
        verify(new_secret(), sent, BODY, now=at(NOW))


def test_a_receiver_holding_old_and_new_secrets_accepts_a_message_signed_by_either():
    old, new = new_secret(), new_secret()
    verify([old, new], signed(old), BODY, now=at(NOW))
    verify([old, new], signed(new), BODY, now=at(NOW))


def test_verify_skips_signatures_of_other_versions_among_several():
    secret = new_secret()
    good = sign(secret, "msg_1", NOW, BODY)
    sent = signed(secret) | {"webhook-signature": f"v1a,{good[3:]} v1,AAAA {good}"}
    verify(secret, sent, BODY, now=at(NOW))
    sent = signed(secret) | {"webhook-signature": f"v2,{good[3:]}"}
    with pytest.raises(Forbidden):
        verify(secret, sent, BODY, now=at(NOW))


# --- SSRF guard ------------------------------------------------------------------------------


def public(*addresses: str):
    """A resolver that answers with the given addresses for any name, and records the names."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return list(addresses)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def message(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.details[0]["message"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "a private address"),
        ("http://192.168.1.20/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://127.0.0.1:8000/hook", "a loopback address"),
        ("http://[::1]/hook", "a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "a loopback address"),
        ("http://[::ffff:10.0.0.1]/hook", "a private address"),
        ("http://100.64.0.1/hook", "a carrier-grade NAT address"),
        ("http://224.0.0.1/hook", "a multicast address"),
        ("http://0.0.0.0/hook", "an unspecified address"),
        ("http://[fe80::1]/hook", "a link-local address"),
        ("http://240.0.0.1/hook", "address"),
    ],
)
async def test_ip_literals_of_internal_addresses_are_refused(url, reason):
    with pytest.raises(InvalidInput) as exc:
        await check_target(url, frozenset(), field="webhookUrl", resolve=public("8.8.8.8"))
    assert exc.value.details[0]["field"] == "webhookUrl"
    assert reason in message(exc)


async def test_localhost_is_refused_by_what_it_resolves_to():
    with pytest.raises(InvalidInput, match="loopback"):
        await check_target("http://localhost:8080/hook", frozenset())


async def test_a_decimal_spelling_of_loopback_is_caught_after_resolution():
    with pytest.raises(InvalidInput, match="loopback"):
        await check_target("http://2130706433/hook", frozenset())


async def test_a_name_is_refused_if_any_of_its_addresses_is_internal():
    with pytest.raises(InvalidInput, match="10.0.0.7|a private address"):
        await check_target("https://hooks.example.com/", frozenset(), resolve=public("93.184.215.14", "10.0.0.7"))


async def test_the_metadata_name_is_refused_before_any_lookup():
    resolve = public("93.184.215.14")
    with pytest.raises(InvalidInput, match="metadata"):
        await check_target("http://metadata.google.internal/computeMetadata/v1/", frozenset(), resolve=resolve)
    assert resolve.asked == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://files.example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://example.com/", "http or https"),
        ("https://user:pass@hooks.example.com/", "user name or password"),
        ("https://token@hooks.example.com/", "user name or password"),
        ("http:///no-host", "host"),
        ("not a url", "http or https"),
        ("https://hooks.example.com/" + "a" * 3000, "at most"),
    ],
)
async def test_urls_that_are_not_plain_http_to_a_host_are_refused(url, problem):
    with pytest.raises(InvalidInput) as exc:
        await check_target(url, frozenset(), field="callback", resolve=public("93.184.215.14"))
    assert exc.value.details == [{"field": "callback", "message": message(exc)}]
    assert problem in message(exc)
    assert exc.value.message.startswith("callback ")


async def test_a_name_that_does_not_resolve_is_refused():
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(InvalidInput, match="could not be resolved"):
        await check_target("https://nowhere.example.com/", frozenset(), resolve=nxdomain)


async def test_a_public_name_passes_and_says_where_to_connect():
    resolve = public("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    target = await check_target("https://Hooks.Example.com/in?x=1", frozenset(), resolve=resolve)
    assert resolve.asked == ["hooks.example.com"]
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.address == "93.184.215.14"
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert target.host_header == "hooks.example.com"


async def test_the_port_defaults_by_scheme_and_an_explicit_one_goes_in_the_host_header():
    target = await check_target("http://hooks.example.com/in", frozenset(), resolve=public("93.184.215.14"))
    assert (target.port, target.host_header) == (80, "hooks.example.com")
    target = await check_target("https://hooks.example.com:8443/in", frozenset(), resolve=public("93.184.215.14"))
    assert (target.port, target.host_header) == (8443, "hooks.example.com:8443")


async def test_an_allowed_host_passes_even_when_internal():
    target = await check_target("http://127.0.0.1:9000/hook", frozenset({"127.0.0.1"}))
    assert (target.address, target.port) == ("127.0.0.1", 9000)
    target = await check_target("http://[::1]:9000/hook", frozenset({"::1"}))
    assert target.host_header == "[::1]:9000"


async def test_allowing_one_spelling_does_not_allow_another_of_the_same_address():
    with pytest.raises(InvalidInput, match="loopback"):
        await check_target("http://localhost:9000/hook", frozenset({"127.0.0.1"}))


# --- retry schedule --------------------------------------------------------------------------

SCHEDULE = (5.0, 30.0, 120.0)


def test_parse_schedule_reads_comma_separated_seconds():
    assert parse_schedule("5,30,120") == (5.0, 30.0, 120.0)
    assert parse_schedule(" 0.5 , 1800 ") == (0.5, 1800.0)


@pytest.mark.parametrize("text", ["", "5,,30", "5,-1", "0", "5,abc", "nan", "inf", "5;30"])
def test_parse_schedule_refuses_anything_but_positive_numbers(text):
    with pytest.raises(ValueError, match="retry schedule"):
        parse_schedule(text)


def test_each_failed_attempt_waits_its_schedule_step_within_twenty_percent():
    rng = random.Random(3)
    for attempt, base in enumerate(SCHEDULE, start=1):
        delays = [next_attempt_delay(attempt, SCHEDULE, None, rng) for _ in range(200)]
        assert all(0.8 * base <= delay <= 1.2 * base for delay in delays)
        assert max(delays) - min(delays) > 0.2 * base  # really jittered, not a constant


def test_retry_after_is_a_floor_capped_at_a_day():
    rng = random.Random(3)
    assert next_attempt_delay(1, SCHEDULE, 90.0, rng) == 90.0
    assert 4.0 <= next_attempt_delay(1, SCHEDULE, 1.0, rng) <= 6.0
    assert next_attempt_delay(1, SCHEDULE, 10 * 86400.0, rng) == 86400.0


def test_the_schedule_running_out_means_give_up():
    assert next_attempt_delay(len(SCHEDULE) + 1, SCHEDULE, None, random.Random(1)) is None
    assert next_attempt_delay(len(SCHEDULE) + 1, SCHEDULE, 30.0, random.Random(1)) is None
    with pytest.raises(ValueError):
        next_attempt_delay(0, SCHEDULE, None)


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("120", now=NOW) == 120.0
    when = datetime.fromtimestamp(NOW + 90, UTC)
    assert parse_retry_after(when.strftime("%a, %d %b %Y %H:%M:%S GMT"), now=NOW) == 90.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None


# --- event body ------------------------------------------------------------------------------


def test_the_event_body_carries_the_job_fields_and_a_utc_timestamp():
    job = {"jobId": "j1", "status": "succeeded", "progress": 100, "resultUrl": "https://cdn/x.png", "assets": ["a1"]}
    when = datetime(2025, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert event_payload("job.succeeded", when, job) == {
        "type": "job.succeeded",
        "timestamp": "2025-01-02T03:04:05.123Z",
        "data": {
            "jobId": "j1",
            "status": "succeeded",
            "progress": 100,
            "resultUrl": "https://cdn/x.png",
            "assets": ["a1"],
        },
    }


def test_the_event_body_takes_epoch_seconds_and_fills_what_a_running_job_lacks():
    body = event_payload("job.progress", 0, {"jobId": "j2", "status": "running", "progress": 40})
    assert body["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert body["data"] == {"jobId": "j2", "status": "running", "progress": 40, "resultUrl": None, "assets": []}


def test_a_naive_timestamp_is_refused_rather_than_guessed():
    with pytest.raises(ValueError, match="timezone"):
        event_payload("job.failed", datetime(2025, 1, 1), {"jobId": "j3", "status": "failed"})
