"""The Responses API through a real `fusion serve` and the fake upstream, driven by the
official openai client: JSON and streams, fused and passed through, tool round trips,
``previous_response_id``, GET and DELETE per key, ``store: false``, every recorded Codex and
Agents SDK request, and the chat route's fault cases."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    E2E_FILES,
    REDIS_URL,
    FakeInThread,
    GatewayProcess,
    config_variant,
    gateway_env,
    require_redis,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)

ALICE, BOB = "alice-key-1", "bob-key-2"
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
JUDGE, BACKUP = "e2e/judge", "e2e/judge-backup"
PATIENT = ("e2e/patient-a", "e2e/patient-b")
VERDICT = "Paris is the capital of France."
PASSTHROUGH = "vendor/chat"
RECORDINGS = Path(__file__).parent / "fixtures" / "agent_recordings"
RECORDED = sorted(RECORDINGS.glob("*/*POST_v1_responses.json"))
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeInThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # The e2e config's small limits, raised so Codex's 40 KB, 12-tool requests fit.
    config = config_variant(
        tmp_path_factory.mktemp("responses"),
        E2E_FILES / "gateway.yaml",
        replace=(
            "limits: {max_body_bytes: 65536, max_messages: 20, max_tools: 4, max_members: 16}",
            "limits: {max_body_bytes: 1048576, max_messages: 50, max_tools: 20, max_members: 16}",
        ),
    )
    env = gateway_env(upstream.fake, f"alice:{ALICE},bob:{BOB}", config=config)
    with GatewayProcess(env) as process:
        yield process


def client_for(gateway: GatewayProcess, key: str = ALICE) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def client(gateway: GatewayProcess) -> OpenAI:
    return client_for(gateway)


def script_trio(fake: FakeUpstream, judge: Reply | None = None) -> None:
    """Members and judge answer (``fake.script`` appends: a later script for the judge
    answers its next request)."""
    for slug in MEMBERS:
        fake.script(slug, Reply(text=f"{slug} says Paris."))
    fake.script(JUDGE, judge or Reply(text=VERDICT, chunk_size=5))


def judge_messages(fake: FakeUpstream, turn: int = -1) -> list[dict[str, Any]]:
    """The conversation the judge's request carried (its last message is the judge prompt)."""
    body: dict[str, Any] = fake.requests_for(JUDGE)[turn].body
    return list(body["messages"])


def member_messages(fake: FakeUpstream, turn: int = -1) -> list[dict[str, Any]]:
    return list(fake.requests_for(MEMBERS[0])[turn].body["messages"])


# --- create -----------------------------------------------------------------------------------


def test_fused_json_response(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    response = client.responses.create(
        model="fusion/trio", input="What is the capital of France?", instructions="Be brief."
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "fusion/trio"
    assert response.output_text == VERDICT
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.instructions == "Be brief."
    fusion = (response.model_extra or {})["fusion"]
    assert fusion["panel"] == "trio" and len(fusion["members"]) == 3
    assert member_messages(fake)[0] == {"role": "system", "content": "Be brief."}


def test_the_alias_keeps_the_model_name_as_written(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    response = client.responses.create(model="fusion-trio", input="Capital of France?")
    assert response.model == "fusion-trio" and response.output_text == VERDICT


def test_passed_through_json_response(client: OpenAI, fake: FakeUpstream) -> None:
    fake.script(PASSTHROUGH, Reply(text="Bonjour."))
    response = client.responses.create(model=PASSTHROUGH, input="Say hello in French.")
    assert response.output_text == "Bonjour." and response.model == PASSTHROUGH
    assert "fusion" not in (response.model_extra or {})
    [request] = fake.requests_for(PASSTHROUGH)
    assert request.body["messages"] == [{"role": "user", "content": "Say hello in French."}]
    assert "input" not in request.body and "store" not in request.body


@pytest.mark.parametrize("model", ["fusion/trio", PASSTHROUGH])
def test_the_stream_helper(client: OpenAI, fake: FakeUpstream, model: str) -> None:
    script_trio(fake)
    fake.script(PASSTHROUGH, Reply(text=VERDICT, chunk_size=4))
    deltas: list[str] = []
    with client.responses.stream(model=model, input="Capital of France?") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == VERDICT and len(deltas) > 1
    assert final.output_text == VERDICT and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert ("fusion" in (final.model_extra or {})) == model.startswith("fusion/")


def test_create_with_stream_true_gives_every_event_in_order(
    client: OpenAI, fake: FakeUpstream
) -> None:
    script_trio(fake)
    events = list(client.responses.create(model="fusion/trio", input="Capital?", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = events[-2]
    assert done.type == "response.output_item.done"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output == [done.item]
    assert completed.response.id == events[0].response.id  # type: ignore[union-attr]


def test_the_warning_header_names_ignored_tools(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    script_trio(fake)
    reply = httpx.post(
        f"{gateway.base_url}/v1/responses",
        headers={"Authorization": f"Bearer {ALICE}"},
        json={"model": "fusion/trio", "input": "hi",
              "tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs"]}]},
        timeout=30,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-fusion-warning"] == "ignored tool types: file_search"
    assert [tool["function"]["name"] for tool in judge_messages_tools(fake)] == ["get_weather"]


def judge_messages_tools(fake: FakeUpstream) -> list[dict[str, Any]]:
    return list(fake.requests_for(JUDGE)[-1].body["tools"])


def test_web_search_turns_the_fusion_option_on_unless_codex_says_off(
    client: OpenAI, fake: FakeUpstream
) -> None:
    script_trio(fake)
    client.responses.create(model="fusion/trio", input="news?", tools=[{"type": "web_search"}])
    assert all(
        fake.requests_for(slug)[-1].body.get("plugins") == [{"id": "web"}] for slug in MEMBERS
    )
    fake.reset()
    script_trio(fake)
    client.responses.create(
        model="fusion/trio", input="news?",
        tools=[{"type": "web_search", "external_web_access": False}],  # type: ignore[typeddict-unknown-key]
    )  # fmt: skip
    assert "plugins" not in fake.requests_for(MEMBERS[0])[-1].body


# --- tools ------------------------------------------------------------------------------------


def test_a_tool_round_trip(client: OpenAI, fake: FakeUpstream) -> None:
    call = FakeToolCall(name="get_weather", arguments='{"city": "Paris"}', id="call_w1")
    script_trio(fake, judge=Reply(tool_calls=[call]))
    first = client.responses.create(
        model="fusion/trio",
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    [item] = first.output
    assert item.type == "function_call"
    assert (item.name, item.call_id, item.arguments) == (
        "get_weather",
        "call_w1",
        '{"city": "Paris"}',
    )
    assert item.id is not None and item.id.startswith("fc_") and item.status == "completed"
    fake.script(JUDGE, Reply(text="It is sunny in Paris."))
    second = client.responses.create(
        model="fusion/trio",
        tools=[WEATHER],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            item.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": "call_w1", "output": "sunny, 24C"},
        ],
    )
    assert second.output_text == "It is sunny in Paris."
    messages = member_messages(fake)
    assert messages[1]["tool_calls"][0]["id"] == "call_w1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 24C"}


def test_a_streamed_namespaced_tool_call_comes_back_namespaced(
    client: OpenAI, fake: FakeUpstream
) -> None:
    call = FakeToolCall(name="agents__spawn", arguments='{"task": "x"}', id="call_n1")
    script_trio(fake, judge=Reply(tool_calls=[call], chunk_size=4))
    namespace = {
        "type": "namespace", "name": "agents", "description": "sub-agents",
        "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}],
    }  # fmt: skip
    with client.responses.stream(
        model="fusion/trio",
        input="spawn one",
        tools=[namespace],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_response()
    [item] = final.output
    assert item.type == "function_call"
    assert (item.name, item.namespace, item.arguments) == ("spawn", "agents", '{"task": "x"}')
    assert judge_messages_tools(fake)[0]["function"]["name"] == "agents__spawn"


# --- stored responses -----------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(
    client: OpenAI, fake: FakeUpstream
) -> None:
    script_trio(fake)
    first = client.responses.create(
        model="fusion/trio", input="Capital of France?", instructions="first instructions"
    )
    fake.script(JUDGE, Reply(text="Berlin."))
    second = client.responses.create(
        model="fusion/trio", input="And of Germany?", previous_response_id=first.id,
        instructions="second instructions",
    )  # fmt: skip
    assert second.previous_response_id == first.id and second.output_text == "Berlin."
    assert member_messages(fake) == [
        {"role": "system", "content": "second instructions"},  # not carried over
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": VERDICT},
        {"role": "user", "content": "And of Germany?"},
    ]
    fake.script(JUDGE, Reply(text="Rome.", chunk_size=2))
    with client.responses.stream(
        model="fusion/trio", input="And Italy?", previous_response_id=second.id
    ) as stream:
        third = stream.get_final_response()
    fake.script(JUDGE, Reply(text="Madrid."))
    client.responses.create(model="fusion/trio", input="Spain?", previous_response_id=third.id)
    assert [m["content"] for m in member_messages(fake)] == [
        "Capital of France?", VERDICT, "And of Germany?", "Berlin.", "And Italy?", "Rome.", "Spain?",
    ]  # fmt: skip


def test_get_and_delete_a_stored_response(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    created = client.responses.create(model="fusion/trio", input="Capital?", metadata={"k": "v"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == VERDICT
    assert fetched.output[0].id == created.output[0].id and fetched.metadata == {"k": "v"}
    deleted = httpx.delete(
        f"{client.base_url}responses/{created.id}",
        headers={"Authorization": f"Bearer {ALICE}"},
    )
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve(created.id)
    assert missing.value.code == "not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_a_streamed_response_is_stored_as_streamed(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    with client.responses.stream(model="fusion/trio", input="Capital?") as stream:
        final = stream.get_final_response()
    fetched = client.responses.retrieve(final.id)
    assert [item.model_dump(exclude={"content"}) for item in fetched.output] == [
        item.model_dump(exclude={"content"}) for item in final.output
    ]
    assert fetched.output_text == final.output_text == VERDICT


def test_another_key_never_sees_a_response(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    script_trio(fake)
    alice, bob = client_for(gateway, ALICE), client_for(gateway, BOB)
    created = alice.responses.create(model="fusion/trio", input="Capital?")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as refused:
        bob.responses.create(model="fusion/trio", input="more", previous_response_id=created.id)
    assert refused.value.code == "previous_response_not_found"
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert alice.responses.retrieve(created.id).id == created.id  # bob's delete changed nothing


def test_store_false_keeps_nothing(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    created = client.responses.create(model="fusion/trio", input="Capital?", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fusion/trio", input="x", previous_response_id=created.id)


def test_a_conversation_grown_past_the_message_limit_through_stored_turns_is_a_413(
    client: OpenAI, fake: FakeUpstream
) -> None:
    script_trio(fake)
    previous = None
    questions = [{"role": "user", "content": f"question {n}"} for n in range(20)]
    for _ in range(2):  # 2 x (20 questions + 1 answer) = 42 messages
        previous = client.responses.create(
            model="fusion/trio", input=questions,  # type: ignore[arg-type]
            previous_response_id=previous.id if previous else openai.NOT_GIVEN,
        )  # fmt: skip
    assert previous is not None
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(
            model="fusion/trio", input=questions, previous_response_id=previous.id,  # type: ignore[arg-type]
        )  # fmt: skip
    assert refused.value.status_code == 413
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_an_unknown_previous_response_is_a_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model="fusion/trio", input="x", previous_response_id="resp_nope")
    assert refused.value.code == "previous_response_not_found"


def test_bad_input_is_a_400_naming_the_field(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="fusion/trio",
            input=[{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],  # type: ignore[list-item]
        )
    assert refused.value.body["param"] == "input[0].content[0].image_url"  # type: ignore[index]


def test_with_redis_every_worker_sees_every_stored_response(
    upstream: FakeInThread, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Two workers on the shared Redis: a response stored by one is read, continued and
    deleted through whichever worker takes the next request."""
    require_redis()
    env = gateway_env(upstream.fake, f"alice:{ALICE},bob:{BOB}", REDIS_URL=REDIS_URL)
    process = GatewayProcess(env, workers=2)
    try:
        script_trio(fake)
        api = client_for(process)
        created = api.responses.create(model="fusion/trio", input="Capital of France?")
        key = f"fusion:response:v1:alice:{created.id}"
        with redis.Redis.from_url(REDIS_URL) as direct:
            assert direct.exists(key) and 0 < direct.ttl(key) <= 2592000
        for _ in range(6):  # several connections: both workers answer some
            fresh = client_for(process)
            assert fresh.responses.retrieve(created.id).output_text == VERDICT
            fresh.close()
        with pytest.raises(openai.NotFoundError):
            client_for(process, BOB).responses.retrieve(created.id)
        fake.script(JUDGE, Reply(text="Berlin."))
        api.responses.create(model="fusion/trio", input="Germany?", previous_response_id=created.id)
        assert [m["content"] for m in member_messages(fake)] == [
            "Capital of France?", VERDICT, "Germany?",
        ]  # fmt: skip
        api.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            client_for(process).responses.retrieve(created.id)
    finally:
        process.stop()


# --- the recorded agents --------------------------------------------------------------------


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recorded_request_is_answered(
    gateway: GatewayProcess, fake: FakeUpstream, path: Path
) -> None:
    """Codex's and the Agents SDK's own requests (model renamed to a loaded panel): a 200 with
    what each agent needs (Codex: output_item.done per item, then response.completed)."""
    body = json.loads(path.read_text())["body"]
    body["model"] = "fusion/trio"
    call = FakeToolCall(name="exec_command", arguments='{"cmd": "echo hi"}')
    script_trio(fake, judge=Reply(text="Done.", tool_calls=[call], chunk_size=3))
    reply = httpx.post(
        f"{gateway.base_url}/v1/responses", headers={"Authorization": f"Bearer {ALICE}"},
        json=body, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    if not body.get("stream"):
        assert [item["type"] for item in reply.json()["output"]] == ["message", "function_call"]
        return
    events = [
        json.loads(line.removeprefix("data: "))
        for line in reply.text.splitlines()
        if line.startswith("data: ")
    ]
    done = [
        event["item"]["type"] for event in events if event["type"] == "response.output_item.done"
    ]
    assert done == ["message", "function_call"]
    assert events[-1]["type"] == "response.completed"
    # No reasoning item nor its encrypted content reached the upstream.
    assert all(b"encrypted_content" not in json.dumps(r.body).encode() for r in fake.received)


# --- faults (as on the chat route) -----------------------------------------------------------


def test_one_member_failing_is_reported_and_left_out(client: OpenAI, fake: FakeUpstream) -> None:
    for slug in MEMBERS:
        fake.script(slug, Reply(text="Paris.") if slug != MEMBERS[1] else Reply(status=400))
    fake.script(JUDGE, Reply(text=VERDICT))
    response = client.responses.create(model="fusion/trio", input="Capital?")
    assert response.output_text == VERDICT
    members = (response.model_extra or {})["fusion"]["members"]
    assert members[1]["error"] and members[0]["error"] is None


def test_every_member_failing_is_a_502_in_openai_shape(
    gateway: GatewayProcess, client: OpenAI, fake: FakeUpstream
) -> None:
    for slug in MEMBERS:
        fake.script(slug, Reply(text="x", malformed=True))
    with pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model="fusion/trio", input="Capital?")
    assert failed.value.status_code == 502
    reply = httpx.post(
        f"{gateway.base_url}/v1/responses", headers={"Authorization": f"Bearer {ALICE}"},
        json={"model": "fusion/trio", "input": "Capital?", "stream": True}, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "panel_failed"
    assert fake.requests_for(JUDGE) == []


def test_a_failing_judge_falls_back_to_a_member_answer(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake, judge=Reply(status=400, error_message="judge broke"))
    fake.script(BACKUP, Reply(status=400, error_message="backup broke"))
    raw = client.responses.with_raw_response.create(model="fusion/trio", input="Capital?")
    assert raw.headers["x-fusion-degraded"] == "judge_failed"
    response = raw.parse()
    assert "says Paris." in response.output_text
    assert (response.model_extra or {})["fusion"]["degraded"] == "judge_failed"
    with client.responses.stream(model="fusion/trio", input="Capital?") as stream:
        final = stream.get_final_response()
    assert "says Paris." in final.output_text
    assert (final.model_extra or {})["fusion"]["degraded"] == "judge_failed"


def test_a_stream_failing_after_it_started_ends_with_response_failed(
    client: OpenAI, fake: FakeUpstream
) -> None:
    script_trio(fake, judge=Reply(text=VERDICT * 4, chunk_size=4, stream_error_after_chunks=3))
    events = list(client.responses.create(model="fusion/trio", input="Capital?", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None  # type: ignore[union-attr]
    assert "response.completed" not in [event.type for event in events]


@pytest.mark.parametrize("stream", [False, True])
def test_a_disconnect_cancels_the_upstream_work(
    gateway: GatewayProcess, fake: FakeUpstream, stream: bool
) -> None:
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/responses", headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "fusion/patient", "input": "Capital?", "stream": stream}, timeout=0.3,
        )  # fmt: skip
    assert wait_until(lambda: sorted(set(fake.cancelled) & set(PATIENT)) == sorted(PATIENT))


def test_a_stream_dropped_mid_answer_cancels_the_judge(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    script_trio(fake, judge=Reply(text=VERDICT * 50, chunk_size=2, chunk_delay_s=0.05))
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/responses", headers={"Authorization": f"Bearer {ALICE}"},
        json={"model": "fusion/trio", "input": "Capital?", "stream": True}, timeout=30,
    ) as reply:  # fmt: skip
        for line in reply.iter_lines():
            if "response.output_text.delta" in line:
                break
    started = time.monotonic()
    assert wait_until(lambda: JUDGE in fake.cancelled, timeout_s=5), fake.completed
    assert time.monotonic() - started < 5
