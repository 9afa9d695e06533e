"""The error contract ("Errors and retries" in the design), through a real `fusion serve` driven
with the official openai client against the fake upstream, plus the pure decisions behind it.

- every member refusing a request with the same client-side status answers that status with the
  provider's fields; every member rate limited answers 429 with the longest Retry-After;
- passthrough errors keep the provider's type, code and param;
- ``x-should-retry: false`` stops the SDK's own retries once the gateway has had its own;
- request validation (n, token limits, content parts, logprobs) and the 20 MiB body limit;
- a member answer over 8 MiB is that member's error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai import OpenAI

from fusion_engine.config import LimitsSpec
from fusion_engine.errors import (
    JudgeFailedError,
    PanelRateLimitedError,
    PanelRejectedError,
    PanelTimeoutError,
    ProviderErrorInfo,
)
from fusion_engine.quorum import panel_failure
from fusion_engine.results import PanelResponse
from fusion_engine.server.errors import client_may_retry, error_response
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)

KEY = "contract-key"
ALPHA, BETA, GAMMA = "e2e/alpha", "e2e/beta", "e2e/gamma"
MEMBERS = (ALPHA, BETA, GAMMA)
JUDGE = "e2e/judge"
PLAIN = "vendor/plain-model"
USER = [{"role": "user", "content": "Summarise this very long document."}]
CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9001 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    # The shipped config: its limits line is part of what is tested (20 MiB bodies).
    env = gateway_env(upstream.fake, KEY, config=ROOT / "config" / "gateway.yaml")
    process = GatewayProcess(env)
    yield process
    process.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> OpenAI:
    """The openai client with its DEFAULT retries (max_retries=2), as users run it."""
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEY, timeout=60)


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=60) as session:
        yield session


def script_members(fake: FakeUpstream, reply: Reply) -> None:
    for slug in MEMBERS:
        fake.script(slug, reply)


def calls(fake: FakeUpstream, *slugs: str) -> int:
    return sum(len(fake.requests_for(slug)) for slug in slugs)


# --- item 13: the status every member agreed on ----------------------------------------------


def test_every_member_refusing_alike_answers_that_status(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Context too long at every member: 400 context_length_exceeded naming a member, one call
    per member (no retries, not by the gateway, not by the SDK)."""
    script_members(fake, Reply(status=400, body=CONTEXT_ERROR))
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    error = raised.value
    assert error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert error.param == "messages"
    assert error.type == "invalid_request_error"
    assert ALPHA in error.message and "maximum context length" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert calls(fake, *MEMBERS) == 3
    assert fake.requests_for(JUDGE) == []


def test_every_member_refusing_alike_answers_that_status_on_a_stream(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Streamed fused reply: the status line is held back, so the 400 arrives as a 400."""
    script_members(fake, Reply(status=400, body=CONTEXT_ERROR))
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="fusion/trio", messages=USER, stream=True)  # type: ignore[arg-type]
    assert raised.value.code == "context_length_exceeded"
    assert calls(fake, *MEMBERS) == 3


def test_members_refusing_differently_is_still_502(http: httpx.Client, fake: FakeUpstream) -> None:
    """Different client-side statuses (or 401s, which are the provider's key, not the request):
    502 as before, final."""
    fake.script(ALPHA, Reply(status=400, body=CONTEXT_ERROR))
    fake.script(BETA, Reply(status=404, error_shape="openai"))
    fake.script(GAMMA, Reply(status=422, error_shape="openai"))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", "messages": USER})
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "panel_failed"
    assert reply.headers["x-should-retry"] == "false"


def test_every_member_rate_limited_answers_429_with_the_longest_retry_after(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """429 from every member, each asking to wait longer than the member budget (3 s): 429 with
    the largest Retry-After, retryable by a client that waits that long."""
    for slug, wait in zip(MEMBERS, (5, 9, 7), strict=True):
        fake.script(slug, Reply(status=429, retry_after=wait))
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "9"
    assert "x-should-retry" not in raised.value.response.headers
    assert calls(fake, *MEMBERS) == 3


# --- item 13: passthrough errors keep the provider's fields ---------------------------------


@pytest.mark.parametrize(
    ("status", "body", "exception"),
    [
        (400, CONTEXT_ERROR, openai.BadRequestError),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
            openai.RateLimitError,
        ),
    ],
    ids=["context_length_exceeded", "insufficient_quota"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_passthrough_errors_keep_the_providers_fields(
    client: OpenAI,
    fake: FakeUpstream,
    status: int,
    body: dict[str, Any],
    exception: type[openai.APIStatusError],
    stream: bool,
) -> None:
    """The provider's type, code, param and message reach the client unchanged."""
    fake.script(PLAIN, Reply(status=status, body=body, headers={"x-should-retry": "false"}))
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=PLAIN, messages=USER, stream=stream)  # type: ignore[call-overload]
    error = raised.value
    assert error.status_code == status
    assert error.body == body["error"]
    assert error.response.headers["x-should-retry"] == "false"


# --- item 14: no SDK retries on top of the gateway's -----------------------------------------


def test_a_failing_fusion_costs_only_the_gateways_own_attempts(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Every member 503: 3 attempts each by the gateway, and the SDK (max_retries=2) adds none."""
    script_members(fake, Reply(status=503))
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert calls(fake, *MEMBERS) == 9


def test_a_failing_passthrough_costs_only_the_gateways_own_attempts(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """A passthrough answered 503: the gateway's 3 attempts, none from the SDK."""
    fake.script(PLAIN, Reply(status=503))
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=PLAIN, messages=USER)  # type: ignore[arg-type]
    assert raised.value.status_code == 503
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert calls(fake, PLAIN) == 3


def test_our_own_refusals_say_do_not_retry(http: httpx.Client) -> None:
    """A 4xx of the gateway's own (unknown panel, bad body, no key) is final."""
    unknown = http.post("/v1/chat/completions", json={"model": "fusion/nope", "messages": USER})
    assert unknown.status_code == 404
    assert unknown.headers["x-should-retry"] == "false"
    anonymous = httpx.post(f"{http.base_url}/v1/chat/completions", json={})
    assert anonymous.status_code == 401
    assert anonymous.headers["x-should-retry"] == "false"


def test_a_failed_judge_chain_says_do_not_retry() -> None:
    """Found in review: every judge failed and no member answer passed the tool quorum — a 502
    after every member's and every judge's retries — went out without x-should-retry: false,
    so SDKs ran the whole fusion twice more."""
    reply = error_response(JudgeFailedError("every judge failed and no member answer passes"))
    assert reply.status_code == 502
    assert reply.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("status", "retried_upstream", "may_retry"),
    [
        (400, False, False),
        (401, False, False),
        (404, True, False),
        (413, False, False),
        (422, True, False),
        (408, False, True),
        (409, False, True),
        (409, True, True),
        (429, False, True),  # our own rate limit: wait Retry-After and come back
        (429, True, False),
        (500, False, True),  # an internal error of ours
        (502, True, False),
        (503, True, False),
        (504, True, False),
    ],
)
def test_client_may_retry(status: int, retried_upstream: bool, may_retry: bool) -> None:
    assert client_may_retry(status, retried_upstream=retried_upstream) is may_retry


# --- item 13: the pure decision --------------------------------------------------------------


def refused(index: int, status: int, *, code: str | None = None, **extra: Any) -> PanelResponse:
    info = ProviderErrorInfo(status=status, type="invalid_request_error", code=code, **extra)
    return PanelResponse(
        index=index, model=f"m{index}", error=f"openrouter answered {status}: no",
        error_kind="rate_limited" if status == 429 else "http_error", provider_error=info,
    )  # fmt: skip


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_panel_failure_same_client_status(status: int) -> None:
    responses = [refused(0, status, code="first", param="messages"), refused(1, status, code="x")]
    error = panel_failure(responses)
    assert isinstance(error, PanelRejectedError)
    assert (error.status_code, error.code, error.param) == (status, "first", "messages")
    assert error.error_type == "invalid_request_error"
    assert "m0" in error.message


@pytest.mark.parametrize(
    "statuses", [(400, 422), (401, 401), (403, 403), (400, 429), (500, 500), (409, 409)]
)
def test_panel_failure_other_mixes_are_502(statuses: tuple[int, int]) -> None:
    error = panel_failure([refused(i, s) for i, s in enumerate(statuses)])
    assert error.status_code == 502
    assert error.code == "panel_failed"


def test_panel_failure_a_member_without_status_is_502() -> None:
    broken = PanelResponse(index=1, model="m1", error="cannot reach", error_kind="connection")
    assert panel_failure([refused(0, 400), broken]).status_code == 502


def test_panel_failure_every_member_rate_limited() -> None:
    responses = [refused(0, 429, retry_after=3.0), refused(1, 429, retry_after=8.0)]
    error = panel_failure(responses)
    assert isinstance(error, PanelRateLimitedError)
    assert (error.status_code, error.retry_after, error.retry_later) == (429, 8.0, True)
    retried = [refused(0, 429), msgspec.structs.replace(refused(1, 429), attempts=3)]
    again = panel_failure(retried)
    assert isinstance(again, PanelRateLimitedError)
    assert (again.retry_after, again.retry_later) == (None, False)


def test_panel_failure_timeouts_stay_504() -> None:
    timed_out = [
        PanelResponse(index=i, model=f"m{i}", error="slow", error_kind="timeout") for i in range(2)
    ]
    assert isinstance(panel_failure(timed_out), PanelTimeoutError)


# --- item 15: validation and the body limit ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": -1}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]},
            "messages[0].content[1]",
        ),
    ],
)
def test_invalid_fused_requests_are_400_naming_the_field(
    http: httpx.Client, fake: FakeUpstream, change: dict[str, Any], param: str
) -> None:
    """Refused before anything is spent, with param naming the field."""
    body = {"model": "fusion/trio", "messages": USER, **change}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert reply.headers["x-should-retry"] == "false"
    assert fake.received == []


@pytest.mark.parametrize(("change", "param"), [({"n": 0}, "n"), ({"max_tokens": -1}, "max_tokens")])
def test_invalid_passthrough_requests_are_400_too(
    http: httpx.Client, fake: FakeUpstream, change: dict[str, Any], param: str
) -> None:
    reply = http.post("/v1/chat/completions", json={"model": PLAIN, "messages": USER, **change})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert fake.received == []


def test_logprobs_false_is_accepted_by_a_fused_model(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    reply = http.post(
        "/v1/chat/completions", json={"model": "fusion/trio", "messages": USER, "logprobs": False}
    )
    assert reply.status_code == 200, reply.text


def test_a_3_3_mb_image_is_accepted(client: OpenAI, fake: FakeUpstream) -> None:
    """A 3.3 MB photo as a base64 data URL (4.4 MB of JSON) fits the default body limit."""
    photo = base64.b64encode(b"\xff\xd8\xff" + bytes(3_300_000)).decode()
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{photo}"}},
    ]
    reply = client.chat.completions.create(
        model="fusion/trio",
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
    )
    assert reply.choices[0].message.content
    sent = fake.requests_for(ALPHA)[0].body["messages"][0]["content"][1]
    assert sent["image_url"]["url"].endswith(photo[-100:])


def test_the_default_body_limit_is_20_mib() -> None:
    assert LimitsSpec().max_body_bytes == 20 * 1024 * 1024
    shipped = (ROOT / "config" / "gateway.yaml").read_text()
    assert "max_body_bytes: 20971520" in shipped


# --- item 11: a member answer over 8 MiB ------------------------------------------------------


def test_an_oversized_member_answer_is_that_members_error(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    """One member answers 12 MiB: it fails with a clear error, the others are fused, and the
    gateway stopped reading (the fake saw its write abandoned)."""
    fake.script(ALPHA, Reply(text="big " * (3 * 1024 * 1024)))
    fake.script(BETA, Reply(text="Paris."))
    fake.script(GAMMA, Reply(text="It is Paris."))
    fake.script(JUDGE, Reply(text="Paris is the capital."))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", "messages": USER})
    assert reply.status_code == 200, reply.text[:500]
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == "Paris is the capital."
    members = body["fusion"]["members"]
    assert "over 8 MiB" in members[0]["error"]
    assert members[0]["error_kind"] == "invalid_response"
    assert members[0]["attempts"] == 1
    assert members[1]["error"] is None and members[2]["error"] is None
    judge_prompt = json.dumps(fake.requests_for(JUDGE)[0].body)
    assert "big big" not in judge_prompt
    assert wait_until(lambda: ALPHA in fake.cancelled, timeout_s=5)
