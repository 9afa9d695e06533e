"""The upstream and client fault matrix, against the real gateway (`fusion serve`).

Each upstream fault is scripted on one member while the others answer (the reply is a 200 that
reports the failure and the judge never sees the broken answer), then on every member (a 502,
or a 504 when every failure was a timeout). Streaming faults hit the judge; client faults check
that a disconnect cancels every upstream call still running and that nothing leaks.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    CITY_PARAMETERS,
    E2E_FILES,
    FakeInThread,
    GatewayProcess,
    cancelled_among,
    fault_matrix_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    script_fused_panel,
    wait_until,
)

FILES = E2E_FILES / "faults"
KEY = "fault-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ONE, TWO, THREE = "f/one", "f/two", "f/three"
MEMBERS = (ONE, TWO, THREE)
JUDGE, BACKUP = "f/judge", "f/judge-backup"
DEAD = "dead/model"
PATIENT = ("p/one", "p/two", "p/three")
PATIENT_JUDGE = "p/judge"
HEALTHY = {ONE: "HEALTHY-ONE Paris.", THREE: "HEALTHY-THREE It is Paris."}
FAULTY = "FAULTY-TEXT that must never reach the judge"
VERDICT = "Paris is the capital of France."
USER = [{"role": "user", "content": "What is the capital of France?"}]
MEMBER_TIMEOUT_S = 1.5  # tests/e2e_files/faults/panels/trio.yaml
MARGIN_S = 1.0  # the judge call, process scheduling, a loaded CI machine
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": CITY_PARAMETERS},
}


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    with GatewayProcess(fault_matrix_env(upstream.fake, KEY, FILES)) as process:
        yield process


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, headers=AUTH, timeout=30) as session:
        yield session


def script_panel(fake: FakeUpstream, judge: Reply | None = None, **faults: Reply) -> None:
    """Healthy members and a verdict for the judge; ``two=`` etc. replace a member's reply."""
    healthy = {ONE: Reply(text=HEALTHY[ONE]), TWO: Reply(text="HEALTHY-TWO Paris")}
    healthy[THREE] = Reply(text=HEALTHY[THREE])
    script_fused_panel(fake, healthy, JUDGE, judge or Reply(text=VERDICT, chunk_size=6), **faults)


def chat(http: httpx.Client, panel: str = "trio", **extra: Any) -> tuple[httpx.Response, float]:
    """POST a fused chat request; the reply and how long it took."""
    started = time.monotonic()
    reply = http.post(
        "/v1/chat/completions", json={"model": f"fusion/{panel}", "messages": USER, **extra}
    )
    return reply, time.monotonic() - started


def stream_body(**extra: Any) -> dict[str, Any]:
    """A streamed fused request to the trio panel."""
    return {"model": "fusion/trio", "messages": USER, "stream": True, **extra}


def judge_prompt(fake: FakeUpstream, judge: str = JUDGE) -> str:
    """The user message presenting the anonymised answers to the (first) judge call."""
    calls = fake.requests_for(judge)
    assert calls, f"{judge} was never called"
    return str(calls[0].body["messages"][-1]["content"])


def sse_lines(
    gateway: GatewayProcess, body: dict[str, Any], *, stop: Callable[[str], bool] | None = None
) -> tuple[httpx.Response, list[str]]:
    """Stream a request and collect its SSE lines (until ``stop(line)`` holds, if given)."""
    lines: list[str] = []
    with (
        httpx.Client(base_url=gateway.base_url, headers=AUTH, timeout=30) as session,
        session.stream("POST", "/v1/chat/completions", json=body) as reply,
    ):
        for line in reply.iter_lines():
            lines.append(line)
            if stop is not None and stop(line):
                break
    return reply, lines


def data_events(lines: list[str]) -> list[Any]:
    """The decoded ``data:`` events of an SSE body (``[DONE]`` as the string)."""
    events: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list[Any]) -> str:
    """The concatenated ``delta.content`` of the chunk events."""
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", ())
    )


# --- one member faulty, the others answer ----------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One upstream fault: how to script it, and what the gateway must make of it."""

    reply: Reply | None  # None: the member's provider refuses connections
    kind: str  # fusion.members[i].error_kind
    text: str  # a substring of fusion.members[i].error
    attempts: tuple[int, int]  # inclusive range of attempts (and of requests the fake saw)
    bound_s: float  # the whole request must finish within this
    status_all: int  # the status when every member has this fault
    panel: str = "trio"
    panel_all: str = "trio"
    cancelled: bool = False  # the fake sees the timed-out call abandoned
    min_gap_s: float = 0.0  # the least time between two attempts (Retry-After or backoff)


SHORT = 0.2 + MARGIN_S  # a fault that fails at once (no retries, or only a short Retry-After)
BUDGET = MEMBER_TIMEOUT_S + MARGIN_S  # a fault that may use the whole member budget
FIRST_BACKOFF_S = 0.5 * (1 - 0.25)  # RetryPolicy: 0.5 s base, up to 25 % jitter off
FAULTS = {
    "slow past timeout": Fault(
        Reply(text=FAULTY, delay_s=3 * MEMBER_TIMEOUT_S), "timeout", "no answer within", (1, 1),
        BUDGET, 504, cancelled=True,
    ),
    "hangs forever": Fault(
        Reply(hang=True), "timeout", "no answer within", (1, 1), BUDGET, 504, cancelled=True
    ),
    "429 storm, Retry-After 0.2 s": Fault(
        Reply(status=429, retry_after=0.2, error_message="slow down"), "rate_limited",
        "answered 429: slow down", (3, 3), 0.4 + SHORT, 429, min_gap_s=0.2,
    ),
    "429 storm, no Retry-After": Fault(
        Reply(status=429, error_message="slow down"), "rate_limited", "answered 429: slow down",
        (2, 3), BUDGET, 429, min_gap_s=FIRST_BACKOFF_S,
    ),
    "429, Retry-After past the budget": Fault(
        Reply(status=429, retry_after=30), "rate_limited", "answered 429", (1, 1), SHORT, 429
    ),
    "500": Fault(
        Reply(status=500), "http_error", "answered 500", (2, 3), BUDGET, 502,
        min_gap_s=FIRST_BACKOFF_S,
    ),
    "502": Fault(
        Reply(status=502), "http_error", "answered 502", (2, 3), BUDGET, 502,
        min_gap_s=FIRST_BACKOFF_S,
    ),
    "503": Fault(
        Reply(status=503, error_message="overloaded"), "http_error", "answered 503: overloaded",
        (2, 3), BUDGET, 502, min_gap_s=FIRST_BACKOFF_S,
    ),
    "400 (not retried)": Fault(
        Reply(status=400, error_message="bad request"), "http_error", "answered 400", (1, 1),
        SHORT, 400,
    ),
    "connection refused": Fault(
        None, "connection", "cannot reach dead", (2, 3), BUDGET, 502, panel="refused",
        panel_all="refused_all",
    ),
    "malformed JSON": Fault(
        Reply(text=FAULTY, malformed=True), "invalid_response", "malformed response", (1, 1),
        SHORT, 502,
    ),
    "200 with choices[0].error": Fault(
        Reply(text=FAULTY, choice_error="provider crashed mid-answer"), "http_error",
        "provider crashed mid-answer", (2, 3), BUDGET, 502, min_gap_s=FIRST_BACKOFF_S,
    ),
    "empty answer": Fault(Reply(text=""), "empty", "empty answer", (1, 1), SHORT, 502),
}  # fmt: skip


def faulty_slug(fault: Fault) -> str:
    return DEAD if fault.reply is None else TWO


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_one_faulty_member_is_reported_and_left_out(
    http: httpx.Client, fake: FakeUpstream, fault: Fault
) -> None:
    """One member faulty: 200, its error and kind in fusion.members, the judge sees the others."""
    script_panel(fake, **({"two": fault.reply} if fault.reply is not None else {}))
    reply, elapsed = chat(http, fault.panel)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == VERDICT
    members = body["fusion"]["members"]
    broken = members[1]
    assert broken["model"] == faulty_slug(fault)
    assert broken["error_kind"] == fault.kind
    assert fault.text in broken["error"]
    assert not broken["content"] and broken["tool_calls"] is None
    assert [m["error"] for m in (members[0], members[2])] == [None, None]
    low, high = fault.attempts
    assert low <= broken["attempts"] <= high
    if fault.reply is not None:
        arrivals = [request.received_at for request in fake.requests_for(TWO)]
        assert len(arrivals) == broken["attempts"]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert all(gap >= fault.min_gap_s - 0.02 for gap in gaps), gaps
    prompt = judge_prompt(fake)
    assert HEALTHY[ONE] in prompt and HEALTHY[THREE] in prompt
    assert "### Answer 2" in prompt and "### Answer 3" not in prompt
    assert "FAULTY-TEXT" not in prompt
    assert elapsed < fault.bound_s
    if fault.cancelled:
        assert wait_until(lambda: TWO in fake.cancelled, timeout_s=3)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_fault_on_every_member_is_an_openai_error(
    http: httpx.Client, fake: FakeUpstream, fault: Fault
) -> None:
    """Every member faulty: 502 (504 when all timed out; the members' status when they all
    refused alike or were all rate limited) in OpenAI's error shape, no judge."""
    if fault.reply is not None:
        for slug in MEMBERS:
            fake.script(slug, fault.reply)
    reply, elapsed = chat(http, fault.panel_all)
    assert reply.status_code == fault.status_all, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    expected = {
        400: ("invalid_request_error", None),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        504: ("upstream_error", "panel_timeout"),
    }.get(fault.status_all, ("upstream_error", "panel_failed"))
    assert (error["type"], error["code"]) == expected
    assert fault.text in error["message"]
    assert "provider-secret-key" not in reply.text
    assert fake.requests_for(JUDGE) == []
    for slug in MEMBERS if fault.reply is not None else ():
        assert fault.attempts[0] <= len(fake.requests_for(slug)) <= fault.attempts[1]
    assert elapsed < fault.bound_s


def test_every_member_timing_out_after_the_hold_is_an_in_band_504_error(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Streaming, every member times out after the status went out: an in-band panel_timeout."""
    for slug in MEMBERS:
        fake.script(slug, Reply(hang=True))
    started = time.monotonic()
    reply, lines = sse_lines(gateway, stream_body())
    assert time.monotonic() - started < BUDGET
    assert reply.status_code == 200
    assert ": keep-alive" in lines
    events = data_events(lines)
    assert len(events) == 1
    assert events[0]["error"]["code"] == "panel_timeout"
    assert set(events[0]["error"]) == {"message", "type", "param", "code"}


def test_timeouts_mixed_with_other_failures_are_502(http: httpx.Client, fake: FakeUpstream) -> None:
    """Every member failed but not all by timeout: 502, not 504."""
    script_panel(fake, one=Reply(hang=True), two=Reply(status=400), three=Reply(hang=True))
    reply, elapsed = chat(http)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "panel_failed"
    assert elapsed < BUDGET


def test_invalid_tool_call_json_reaches_the_judge_marked(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    """A member's tool call with broken JSON arguments: 200, and the judge sees it marked invalid."""
    broken = '{"city": "Par'
    fake.script(ONE, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    fake.script(TWO, Reply(tool_calls=[FakeToolCall("get_weather", broken)]))
    fake.script(THREE, Reply(text="I would look it up."))
    call = FakeToolCall("get_weather", '{"city": "Paris"}', id="call_ok")
    fake.script(JUDGE, Reply(tool_calls=[call]))
    reply, elapsed = chat(http, tools=[WEATHER_TOOL])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["id"] == "call_ok"
    proposal = body["fusion"]["members"][1]["tool_calls"][0]["function"]
    assert proposal["arguments"] == broken
    prompt = judge_prompt(fake)
    assert f'"invalid_json_arguments": {json.dumps(broken)}' in prompt
    assert '"city": "Paris"' in prompt
    assert fake.requests_for(JUDGE)[0].body["tools"] == [WEATHER_TOOL]
    assert elapsed < SHORT


def test_judge_with_invalid_tool_call_json_hands_over_to_the_fallback(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    """A judge whose tool call a client could not execute counts as failed: the fallback answers."""
    script_panel(fake, Reply(tool_calls=[FakeToolCall("get_weather", "{not json")]))
    fake.script(BACKUP, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    reply, _ = chat(http, tools=[WEATHER_TOOL])
    assert reply.status_code == 200
    body = reply.json()
    assert body["fusion"]["judge"]["model"] == BACKUP
    first = body["fusion"]["judge_attempts"][0]
    assert first["error_kind"] == "invalid_response" and "not valid JSON" in first["error"]
    arguments = body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"city": "Paris"}


# --- streaming faults on the judge -----------------------------------------------------------


def test_judge_stream_cut_mid_way_is_an_in_band_error(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """The judge's connection drops after some tokens: the client gets an error event, no [DONE]."""
    script_panel(fake, Reply(text="a verdict that breaks off", chunk_size=4, cut_after_chunks=3))
    reply, lines = sse_lines(gateway, stream_body())
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = data_events(lines)
    assert streamed_text(events) == "a verdict th"
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "judge_failed" and "broke off" in error["message"]
    assert fake.requests_for(BACKUP) == []  # tokens went out: switching judges would mix answers


def test_judge_stream_erroring_mid_way_is_an_in_band_error(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """The judge sends a mid-stream error event after tokens: the client gets an error event."""
    script_panel(
        fake, Reply(text="a verdict that fails", chunk_size=4, stream_error_after_chunks=2,
                    error_message="provider died")
    )  # fmt: skip
    _, lines = sse_lines(gateway, stream_body())
    events = data_events(lines)
    assert streamed_text(events) == "a verdic"
    assert "[DONE]" not in events
    assert "provider died" in events[-1]["error"]["message"]


def test_judge_stream_stalling_past_its_budget_is_an_in_band_error(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """The judge stalls mid-answer past its time budget: an error event within the budget."""
    script_panel(fake, Reply(text="slow " * 40, chunk_size=5, chunk_delay_s=0.25))
    started = time.monotonic()
    _, lines = sse_lines(gateway, stream_body())
    elapsed = time.monotonic() - started
    events = data_events(lines)
    assert streamed_text(events).startswith("slow slow")
    assert events[-1]["error"]["code"] == "judge_failed"
    assert elapsed < BUDGET
    assert wait_until(lambda: JUDGE in fake.cancelled, timeout_s=3)


def test_judge_stream_without_done_but_finished_is_accepted(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A judge stream that sent its finish chunk but no [DONE] is a complete answer."""
    script_panel(fake, Reply(text=VERDICT, chunk_size=5, no_done=True))
    _, lines = sse_lines(gateway, stream_body())
    events = data_events(lines)
    assert streamed_text(events) == VERDICT
    assert events[-1] == "[DONE]"
    assert not any("error" in event for event in events if isinstance(event, dict))
    finishing = events[-2]
    assert finishing["choices"][0]["finish_reason"] == "stop"
    assert finishing["fusion"]["judge"]["model"] == JUDGE
    assert finishing["fusion"]["degraded"] is None


def test_judge_failing_before_its_first_token_streams_a_member_answer(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Judge and fallback fail before any token: a member answer streams, marked degraded."""
    script_panel(fake, Reply(status=400, error_message="judge refused"))
    fake.script(BACKUP, Reply(status=401, error_message="backup refused"))
    reply, lines = sse_lines(gateway, stream_body())
    assert reply.status_code == 200
    events = data_events(lines)
    assert streamed_text(events) in {HEALTHY[ONE], "HEALTHY-TWO Paris", HEALTHY[THREE]}
    assert events[-1] == "[DONE]"
    fusion = events[-2]["fusion"]
    assert fusion["degraded"] == "judge_failed"
    assert fusion["judge"] is None
    assert [a["model"] for a in fusion["judge_attempts"]] == [JUDGE, BACKUP]


@pytest.mark.parametrize(
    "judge",
    [
        Reply(text="never sent", cut_after_chunks=0),
        Reply(reasoning="thinking it over", text="never sent", chunk_size=4, cut_after_chunks=2),
    ],
    ids=["after the role chunk", "after reasoning chunks"],
)
def test_judge_breaking_off_before_any_visible_token_falls_back(
    gateway: GatewayProcess, fake: FakeUpstream, judge: Reply
) -> None:
    """A judge stream dying before any token reached the client hands over to the fallback."""
    script_panel(fake, judge)
    fake.script(BACKUP, Reply(text="backup verdict", chunk_size=4))
    _, lines = sse_lines(gateway, stream_body())
    events = data_events(lines)
    assert streamed_text(events) == "backup verdict"
    assert events[-1] == "[DONE]"


# --- client faults ---------------------------------------------------------------------------


def patient_body(**extra: Any) -> dict[str, Any]:
    """A fused request to the patient panel (60 s member budget: only a disconnect ends it)."""
    return {"model": "fusion/patient", "messages": USER, **extra}


def test_disconnect_before_the_fan_out_completes_cancels_the_rest(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A non-streaming client leaving while two members still work cancels those two calls."""
    fake.script(PATIENT[0], Reply(text="quick answer"))
    fake.script(PATIENT[1], Reply(hang=True))
    fake.script(PATIENT[2], Reply(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions", headers=AUTH, json=patient_body(),
            timeout=0.5,
        )  # fmt: skip
    assert wait_until(lambda: cancelled_among(fake, PATIENT) == sorted(PATIENT[1:]), timeout_s=5)
    assert PATIENT[0] in fake.completed
    assert fake.requests_for(PATIENT_JUDGE) == []


def test_disconnect_while_the_status_is_held_cancels_every_member(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving before its first byte cancels every member call."""
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions", headers=AUTH,
            json=patient_body(stream=True), timeout=0.15,
        )  # fmt: skip
    assert wait_until(lambda: cancelled_among(fake, PATIENT) == sorted(PATIENT), timeout_s=5)


def test_disconnect_during_the_panel_cancels_every_member(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving after keep-alives (stream open, panel working) cancels members."""
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    reply, lines = sse_lines(gateway, patient_body(stream=True), stop=lambda x: x == ": keep-alive")
    assert reply.status_code == 200 and lines[-1] == ": keep-alive"
    assert wait_until(lambda: cancelled_among(fake, PATIENT) == sorted(PATIENT), timeout_s=5)
    assert fake.requests_for(PATIENT_JUDGE) == []


def test_disconnect_while_the_judge_works_cancels_the_judge(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A non-streaming client leaving while the (non-streamed) judge works cancels the judge."""
    fake.script(PATIENT_JUDGE, Reply(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions", headers=AUTH, json=patient_body(),
            timeout=0.5,
        )  # fmt: skip
    assert wait_until(lambda: PATIENT_JUDGE in fake.cancelled, timeout_s=5)
    assert sorted(fake.completed) == sorted(PATIENT)


def test_disconnect_during_the_judge_stream_cancels_the_judge(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving mid-answer makes the gateway drop the judge's stream."""
    fake.script(PATIENT_JUDGE, Reply(text="a long verdict " * 40, chunk_size=4, chunk_delay_s=0.05))
    _, lines = sse_lines(
        gateway,
        patient_body(stream=True),
        stop=lambda x: x.startswith("data: {") and '"content"' in x,
    )
    assert streamed_text(data_events(lines))
    assert wait_until(lambda: PATIENT_JUDGE in fake.cancelled, timeout_s=5)
    assert PATIENT_JUDGE not in fake.completed


# --- nothing leaks, nobody blocks ------------------------------------------------------------


def tcp_table() -> list[tuple[str, str, str, int]]:
    """IPv4 sockets as (local, remote, state, bytes in the send queue), addresses as in /proc."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        rows.append((fields[1], fields[2], fields[3], int(fields[4].split(":")[0], 16)))
    return rows


def loopback(port: int) -> str:
    return f"0100007F:{port:04X}"


def established_to(port: int) -> int:
    """ESTABLISHED connections whose remote end is 127.0.0.1:``port`` (the gateway's side)."""
    return sum(
        1 for _, remote, state, _ in tcp_table() if state == "01" and remote == loopback(port)
    )


def send_queue(local_port: int, remote_port: int) -> int:
    """Bytes waiting in the send queue of the socket 127.0.0.1:local -> 127.0.0.1:remote."""
    return sum(
        queued
        for local, remote, _, queued in tcp_table()
        if local == loopback(local_port) and remote == loopback(remote_port)
    )


def raw_request(
    gateway: GatewayProcess, body: dict[str, Any], *, receive_buffer: int | None = None
) -> socket.socket:
    """Send a chat request on a bare socket and read nothing (the caller closes it)."""
    payload = json.dumps(body).encode()
    client = socket.socket()
    if receive_buffer is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.connect(("127.0.0.1", gateway.port))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    client.sendall(head.encode() + payload)
    return client


needs_proc = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp"
)


@needs_proc
def test_disconnecting_clients_leak_no_upstream_connections(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """After 20 clients leave mid-fusion, the gateway's connections to the upstream go back to
    their baseline (idle pool connections allowed) and every call they made was cancelled."""
    port = httpx.URL(fake.base_url).port
    assert port is not None
    with ThreadPoolExecutor(5) as pool:  # warm-up: the pool keeps some idle connections
        warm = list(pool.map(lambda _: httpx.post(
            f"{gateway.base_url}/v1/chat/completions", headers=AUTH, json=patient_body(),
            timeout=10,
        ).status_code, range(5)))  # fmt: skip
    assert warm == [200] * 5
    baseline = established_to(port)
    fake.reset()
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    clients = [raw_request(gateway, patient_body(stream=n % 2 == 1)) for n in range(20)]
    try:
        assert wait_until(lambda: len(fake.received) == 60, timeout_s=5)
        for streamed in clients[1::2]:  # past the 0.3 s hold, the streamed replies are open
            streamed.settimeout(5)
            assert streamed.recv(64).startswith(b"HTTP/1.1 200")
        in_flight = established_to(port)
    finally:
        for client in clients:
            client.close()
    assert in_flight >= 60  # the counter sees every member call of the 20 clients
    assert wait_until(lambda: len(cancelled_among(fake, PATIENT)) == 60, timeout_s=5)
    assert wait_until(lambda: established_to(port) <= baseline, timeout_s=5), (
        f"{established_to(port)} connections to the upstream, baseline {baseline}"
    )


@needs_proc
def test_a_client_that_does_not_read_blocks_nobody(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """One client opens a big streamed answer and never reads it; 10 others still finish fast."""
    script_panel(fake)
    big = "x" * 8_000_000  # more than the socket buffers between the gateway and the client
    fake.script_matching(
        JUDGE, "SLOW-READER",
        Reply(text=big, chunk_size=65536, prompt_tokens=1, completion_tokens=1),
    )  # fmt: skip
    question = [{"role": "user", "content": "SLOW-READER: tell me everything"}]
    slow = raw_request(gateway, stream_body(messages=question), receive_buffer=4096)
    try:
        assert wait_until(lambda: len(fake.requests_for(JUDGE)) == 1, timeout_s=5)
        time.sleep(0.5)  # let the unread stream fill every buffer on its way

        def one_request(_: int) -> tuple[int, float, str]:
            with httpx.Client(base_url=gateway.base_url, headers=AUTH, timeout=10) as session:
                reply, elapsed = chat(session)
            return reply.status_code, elapsed, reply.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(one_request, range(10)))
        assert [status for status, _, _ in results] == [200] * 10
        assert {content for _, _, content in results} == {VERDICT}
        assert max(elapsed for _, elapsed, _ in results) < 2.0
        # The slow client really is stuck: the gateway has unsent bytes queued towards it.
        assert send_queue(gateway.port, slow.getsockname()[1]) > 0
    finally:
        slow.close()
