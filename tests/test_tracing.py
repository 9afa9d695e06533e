"""OpenTelemetry traces of a real ``fusion serve``: what the real OTLP/HTTP exporter sends,
received by a small collector in the test and decoded with ``opentelemetry-proto``."""

from __future__ import annotations

import gzip
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    E2E_FILES,
    ROOT,
    FakeInThread,
    GatewayProcess,
    free_port,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)
from .test_readme import PRINTED_BASE, code_block

pytest.importorskip("opentelemetry.proto", reason="the `otel` extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KEY = "trace-key"
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
JUDGE = "e2e/judge"
#: OTLP's span kinds and status code (trace.proto).
SERVER, CLIENT, INTERNAL, ERROR = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL, Status.STATUS_CODE_ERROR  # fmt: skip


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(raw)
                    with collector._lock:
                        for resource in request.resource_spans:
                            for scope in resource.scope_spans:
                                collector.spans.extend(scope.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def trace(self, trace_id: bytes) -> list[Span]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, condition: Callable[[list[Span]], bool]) -> list[Span]:
        """Every span received once ``condition`` holds for them (bounded wait)."""
        assert wait_until(lambda: condition(self.all()), timeout_s=10), self.all()
        return self.all()

    def all(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attrs(span: Span) -> dict[str, Any]:
    return {item.key: value(item.value) for item in span.attributes}


def named(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span.name == name]


def tracing_env(upstream: FakeInThread, collector: Collector, **extra: str) -> dict[str, str]:
    return gateway_env(
        upstream.fake, KEY, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50", OTEL_SERVICE_NAME="fusion-under-test", **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread, collector: Collector) -> Iterator[GatewayProcess]:
    with GatewayProcess(tracing_env(upstream, collector)) as process:
        yield process


def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEY, max_retries=0)


def script_panel(fake: FakeUpstream, judge: Reply | None = None, **replacing: Reply) -> None:
    for slug in MEMBERS:
        fake.script(slug, replacing.get(slug.rsplit("/", 1)[-1], Reply(text="Paris.")))
    fake.script(JUDGE, judge or Reply(text="Paris, the capital."))


def traceparent() -> tuple[bytes, bytes, str]:
    """A client's trace id and span id, and the ``traceparent`` header naming them."""
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return trace_id, span_id, f"00-{trace_id.hex()}-{span_id.hex()}-01"


def fused_tree(collector: Collector, trace_id: bytes) -> tuple[Span, Span, list[Span], Span]:
    """The server span, the fusion span, the member spans and the judge span of a trace, once
    all of them arrived."""
    collector.wait_for(
        lambda _: (
            any(s.kind == SERVER for s in collector.trace(trace_id))
            and len(named(collector.trace(trace_id), f"chat {JUDGE}")) == 1
            and len(named(collector.trace(trace_id), "fusion trio")) == 1
        )
    )
    spans = collector.trace(trace_id)
    (server,) = [span for span in spans if span.kind == SERVER]
    (fusion,) = named(spans, "fusion trio")
    members = [span for span in spans if attrs(span).get("fusion.role") == "member"]
    (judge,) = named(spans, f"chat {JUDGE}")
    return server, fusion, sorted(members, key=lambda s: attrs(s)["fusion.member.index"]), judge


def test_a_fused_request_is_one_trace_continued_from_the_client(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector
) -> None:
    """The client's traceparent is continued: its span → the server span → ``fusion trio`` →
    one ``chat`` span per member and one for the judge, with GenAI and fusion attributes; each
    member's upstream request names its own span in the traceparent it carries."""
    script_panel(fake)
    trace_id, parent_id, header = traceparent()
    reply = client(gateway).chat.completions.create(
        model="fusion/trio", messages=[{"role": "user", "content": "Capital of France?"}],
        extra_headers={"traceparent": header},
    )  # fmt: skip
    assert reply.choices[0].message.content == "Paris, the capital."
    server, fusion, members, judge = fused_tree(collector, trace_id)

    assert server.parent_span_id == parent_id
    assert server.name == "POST /v1/chat/completions"
    assert attrs(server)["http.response.status_code"] == 200
    assert attrs(server)["fusion.key"] == "key1"  # the key's name (unnamed: key1), never the key
    assert fusion.parent_span_id == server.span_id and fusion.kind == INTERNAL
    fused = attrs(fusion)
    assert fused["fusion.panel"] == "trio" and fused["fusion.cache"] == "off"
    assert fused["fusion.agreement"] == pytest.approx(1.0)
    assert fused["fusion.cost_usd"] > 0 and "fusion.degraded" not in fused

    assert [span.name for span in members] == [f"chat {slug}" for slug in MEMBERS]
    for index, span in enumerate(members):
        assert span.parent_span_id == fusion.span_id and span.kind == CLIENT
        member = attrs(span)
        assert member["gen_ai.operation.name"] == "chat"
        assert member["gen_ai.provider.name"] == "openrouter"
        assert member["gen_ai.request.model"] == member["gen_ai.response.model"] == MEMBERS[index]
        assert member["fusion.member.index"] == index and member["fusion.panel"] == "trio"
        assert member["gen_ai.usage.input_tokens"] > 0
        assert member["gen_ai.usage.output_tokens"] == 1
        assert member["gen_ai.response.finish_reasons"] == ["stop"]
        assert member["fusion.cost_usd"] > 0
        (sent,) = fake.requests_for(MEMBERS[index])
        assert sent.headers["traceparent"] == f"00-{trace_id.hex()}-{span.span_id.hex()}-01"

    assert judge.parent_span_id == fusion.span_id
    verdict = attrs(judge)
    assert verdict["fusion.role"] == "judge" and verdict["fusion.member.index"] == 0
    assert verdict["gen_ai.usage.output_tokens"] == 3 and verdict["fusion.cost_usd"] > 0
    (sent,) = fake.requests_for(JUDGE)
    assert sent.headers["traceparent"] == f"00-{trace_id.hex()}-{judge.span_id.hex()}-01"
    assert fused["fusion.cost_usd"] == pytest.approx(
        sum(attrs(span)["fusion.cost_usd"] for span in [*members, judge])
    )


def test_a_streamed_fusion_span_ends_when_the_stream_ends(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector
) -> None:
    """Streamed, the judge's answer is relayed as it comes: the fusion span ends after the
    judge's last chunk, and the server span after the fusion span; the figures are on it."""
    script_panel(
        fake, judge=Reply(text="Paris, the capital of France.", chunk_size=4, chunk_delay_s=0.05)
    )
    trace_id, _, header = traceparent()
    stream = client(gateway).chat.completions.create(
        model="fusion/trio", messages=[{"role": "user", "content": "Capital of France?"}],
        stream=True, extra_headers={"traceparent": header},
    )  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Paris, the capital of France."
    server, fusion, members, judge = fused_tree(collector, trace_id)
    assert judge.parent_span_id == fusion.span_id and len(members) == 3
    assert fusion.end_time_unix_nano >= judge.end_time_unix_nano
    assert server.end_time_unix_nano >= fusion.end_time_unix_nano
    assert attrs(fusion)["fusion.cost_usd"] > 0
    assert attrs(judge)["gen_ai.response.model"] == JUDGE


def test_a_failing_member_and_a_failing_judge_are_error_spans(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector
) -> None:
    """A member refused with a 400 and a judge refused before its fallback answered: their
    spans have status ERROR and an exception event; the fallback judge's span is fine."""
    script_panel(
        fake, judge=Reply(status=400, error_message="judge says no"),
        beta=Reply(status=400, error_message="no such thing"),
    )  # fmt: skip
    fake.script("e2e/judge-backup", Reply(text="Paris."))
    trace_id, _, header = traceparent()
    client(gateway).chat.completions.create(
        model="fusion/trio", messages=[{"role": "user", "content": "Capital of France?"}],
        extra_headers={"traceparent": header},
    )  # fmt: skip
    collector.wait_for(
        lambda _: len(named(collector.trace(trace_id), "chat e2e/judge-backup")) == 1
    )
    collector.wait_for(lambda _: len(named(collector.trace(trace_id), "fusion trio")) == 1)
    spans = collector.trace(trace_id)
    (fusion,) = named(spans, "fusion trio")
    for name in ("chat e2e/beta", f"chat {JUDGE}"):
        (failed,) = named(spans, name)
        assert failed.status.code == ERROR, name
        assert [event.name for event in failed.events] == ["exception"]
        assert attrs(failed)["error.type"] == "http_error"
        assert failed.parent_span_id == fusion.span_id
    (backup,) = named(spans, "chat e2e/judge-backup")
    assert backup.status.code != ERROR and attrs(backup)["fusion.member.index"] == 1
    assert named(spans, "chat e2e/alpha")[0].status.code != ERROR


def test_a_passed_through_call_is_one_chat_span_under_the_server_span(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector
) -> None:
    """A model that is not a panel: one ``chat <model>`` span, child of the server span, with
    the provider's tokens; its upstream request carries the span's traceparent. Streamed the
    same, ending with the stream."""
    fake.script(
        "e2e/alpha", Reply(text="Plain answer."), Reply(text="Streamed answer here.", chunk_size=3)
    )
    for stream in (False, True):
        trace_id, _, header = traceparent()
        created = client(gateway).chat.completions.create(
            model="e2e/alpha", messages=[{"role": "user", "content": "Hi"}], stream=stream,
            extra_headers={"traceparent": header},
        )  # fmt: skip
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in created if c.choices)
        collector.wait_for(lambda _, t=trace_id: any(s.kind == SERVER for s in collector.trace(t)))
        spans = collector.trace(trace_id)
        (server,) = [span for span in spans if span.kind == SERVER]
        (call,) = named(spans, "chat e2e/alpha")
        assert call.parent_span_id == server.span_id and len(spans) == 2
        assert attrs(call)["fusion.role"] == "passthrough"
        assert attrs(call)["gen_ai.response.model"] == "e2e/alpha"
        assert server.end_time_unix_nano >= call.end_time_unix_nano
        # Streamed too: from the usage chunk the gateway asks the provider for.
        assert attrs(call)["gen_ai.usage.output_tokens"] == (3 if stream else 2)
        assert attrs(call)["fusion.cost_usd"] > 0
        sent = fake.requests_for("e2e/alpha")[-1]
        assert sent.headers["traceparent"] == f"00-{trace_id.hex()}-{call.span_id.hex()}-01"


def every_value(spans: list[Span]) -> str:
    """Every attribute and event attribute value of ``spans``, as one text."""
    texts = [repr(attrs(span)) for span in spans]
    texts += [repr({a.key: value(a.value) for a in e.attributes}) for s in spans for e in s.events]
    return "\n".join(texts)


def test_prompts_and_answers_stay_out_of_spans_unless_capture_is_on(
    gateway: GatewayProcess, upstream: FakeInThread, fake: FakeUpstream, collector: Collector
) -> None:
    """By default no span holds the prompt or an answer; with
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` the chat spans carry them as
    ``gen_ai.input.messages`` / ``gen_ai.output.messages``."""
    secret = f"secret-{secrets.token_hex(6)}"
    answer = f"answer-{secrets.token_hex(6)}"
    script_panel(fake, alpha=Reply(text=answer))
    capture = GatewayProcess(
        tracing_env(upstream, collector, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    )
    with capture:
        for process, captured in ((gateway, False), (capture, True)):
            script_panel(fake, alpha=Reply(text=answer))
            trace_id, _, header = traceparent()
            client(process).chat.completions.create(
                model="fusion/trio", messages=[{"role": "user", "content": f"Say {secret}"}],
                extra_headers={"traceparent": header},
            )  # fmt: skip
            _, _, members, judge = fused_tree(collector, trace_id)
            text = every_value(collector.trace(trace_id))
            assert (secret in text) is captured and (answer in text) is captured
            if captured:
                member = attrs(members[0])
                assert secret in member["gen_ai.input.messages"]
                assert '"role":"user"' in member["gen_ai.input.messages"]
                assert answer in member["gen_ai.output.messages"]
                assert answer in attrs(judge)["gen_ai.input.messages"]


SERVE_ONE_REQUEST = """
import json, sys
from litestar.testing import TestClient
from fusion_engine.server.app import create_app

with TestClient(create_app()) as client:
    reply = client.post(
        "/v1/chat/completions", headers={"Authorization": "Bearer trace-key"},
        json={"model": "fusion/trio", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200, reply.text
# Litestar's app constructor probes for its own OpenTelemetry plugin, which loads the semantic
# conventions' constants (and their namespace package) when they are installed: names, no code
# that runs per request. Everything else of OpenTelemetry (API, SDK, exporter) must stay out.
print(json.dumps(sorted(
    name for name in sys.modules
    if name.split(".")[0] == "opentelemetry"
    and name != "opentelemetry" and not name.startswith("opentelemetry.semconv")
)))
"""


def test_without_an_endpoint_opentelemetry_is_never_imported(
    upstream: FakeInThread, fake: FakeUpstream, collector: Collector
) -> None:
    """The server built and serving a fusion has no OpenTelemetry API, SDK or exporter module
    loaded unless an OTLP endpoint is set (the same script with one set loads them: the check
    can see it)."""
    outputs = {}
    for traced in (False, True):
        script_panel(fake)
        env = tracing_env(upstream, collector) if traced else gateway_env(upstream.fake, KEY)
        env = {**env, "PATH": os.environ.get("PATH", "")}
        run = subprocess.run(
            [sys.executable, "-c", SERVE_ONE_REQUEST], env=env, cwd=ROOT, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outputs[traced] = run.stdout.strip().splitlines()[-1]
    assert outputs[False] == "[]"
    assert "opentelemetry.sdk.trace" in outputs[True] and "opentelemetry.trace" in outputs[True]


def test_the_readme_tracing_commands_trace_a_fusion(
    upstream: FakeInThread, fake: FakeUpstream, collector: Collector
) -> None:
    """README "Tracing": the printed `fusion serve` (its endpoint pointed at the test's
    collector) and curl give the caller's trace a server span, ``fusion budget`` and a span per
    member and judge. The export interval is set past the test: the spans arrive because the
    gateway flushes them when it shuts down."""
    script = code_block("## Tracing", "sh")
    serve, curl = script.replace("\\\n", "").strip().splitlines()
    words = shlex.split(serve)
    assert words[-2:] == ["fusion", "serve"]
    variables = dict(word.split("=", 1) for word in words[:-2])
    assert variables.pop("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://127.0.0.1:4318"
    env = {
        "OPENROUTER_BASE_URL": fake.base_url, "OPENROUTER_API_KEY": "x", **variables,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }  # fmt: skip
    match = re.search(r"traceparent: 00-(\w{32})-(\w{16})-01", curl)
    assert match
    trace_id, parent_id = bytes.fromhex(match.group(1)), bytes.fromhex(match.group(2))
    with GatewayProcess(env) as gateway:
        ran = subprocess.run(
            ["bash", "-c", curl.replace(PRINTED_BASE, gateway.base_url) + " --fail-with-body"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, (ran.stdout, ran.stderr)
        assert json.loads(ran.stdout)["object"] == "chat.completion"
    collector.wait_for(lambda _: len(named(collector.trace(trace_id), "fusion budget")) == 1)
    spans = collector.trace(trace_id)
    (server,) = [span for span in spans if span.kind == SERVER]
    (fusion,) = named(spans, "fusion budget")
    calls = [span for span in spans if span.parent_span_id == fusion.span_id]
    assert server.parent_span_id == parent_id and fusion.parent_span_id == server.span_id
    assert sorted(attrs(span)["fusion.role"] for span in calls) == ["judge"] + ["member"] * 3
    assert attrs(server)["http.route"] == "/v1/chat/completions"
    assert {attrs(span)["gen_ai.request.model"] for span in calls} == {
        "xiaomi/mimo-v2.5", "deepseek/deepseek-v4-flash", "xiaomi/mimo-v2.5-pro",
        "qwen/qwen3.7-plus",
    }  # fmt: skip


def cancelled(span: Span) -> bool:
    return span.status.code == ERROR and "cancelled" in [event.name for event in span.events]


def test_a_client_that_leaves_cancels_the_spans_of_its_fusion(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector
) -> None:
    """A client that gives up on a non-streamed fusion (members still working): its member
    spans, the fusion span and the server span (status 499) end with a ``cancelled`` event."""
    for slug in ("e2e/patient-a", "e2e/patient-b"):
        fake.script(slug, Reply(hang=True))
    trace_id, _, header = traceparent()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json={"model": "fusion/patient", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {KEY}", "traceparent": header}, timeout=1.0,
        )  # fmt: skip
    collector.wait_for(
        lambda _: (
            any(s.kind == SERVER for s in collector.trace(trace_id))
            and len(named(collector.trace(trace_id), "chat e2e/patient-b")) == 1
        )
    )
    spans = collector.trace(trace_id)
    (server,) = [span for span in spans if span.kind == SERVER]
    assert attrs(server)["http.response.status_code"] == 499 and cancelled(server)
    for name in ("fusion patient", "chat e2e/patient-a", "chat e2e/patient-b"):
        (span,) = named(spans, name)
        assert cancelled(span), name


def test_stragglers_cut_at_the_deadline_end_cancelled(
    upstream: FakeInThread, fake: FakeUpstream, collector: Collector, tmp_path: Path
) -> None:
    """A member still working when the panel's deadline passes with the quorum in: its span
    ends cancelled, the others and the judge's do not, and the fusion goes on."""
    panels = tmp_path / "panels"
    shutil.copytree(E2E_FILES / "panels", panels)
    (panels / "hasty.yaml").write_text(
        "schema_version: 1\nname: hasty\nmodels:\n  - slug: e2e/on-time\n  - slug: e2e/late\n"
        "judge_model: e2e/hasty-judge\ndeadline_s: 0.3\nmin_responses: 1\n"
    )
    fake.script("e2e/on-time", Reply(text="Here."))
    fake.script("e2e/late", Reply(hang=True))
    fake.script("e2e/hasty-judge", Reply(text="Here, fused."))
    with GatewayProcess(
        {**tracing_env(upstream, collector), "FUSION_PANELS_DIR": str(panels)}
    ) as process:
        trace_id, _, header = traceparent()
        reply = client(process).chat.completions.create(
            model="fusion/hasty", messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"traceparent": header},
        )  # fmt: skip
        assert reply.choices[0].message.content == "Here, fused."
        collector.wait_for(lambda _: len(named(collector.trace(trace_id), "fusion hasty")) == 1)
    spans = collector.trace(trace_id)
    (late,) = named(spans, "chat e2e/late")
    assert cancelled(late)
    for name in ("chat e2e/on-time", "chat e2e/hasty-judge", "fusion hasty"):
        (span,) = named(spans, name)
        assert span.status.code != ERROR, name


def test_an_endpoint_without_the_extra_refuses_to_serve(tmp_path: Path) -> None:
    """``fusion serve`` with an OTLP endpoint but no OpenTelemetry installed (a stand-in
    ``opentelemetry`` package hides the real one) stops before serving, saying what to install."""
    shadow = tmp_path / "opentelemetry"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "FUSION_PORT": str(free_port()),
        "OPENROUTER_API_KEY": "x",
    }  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-m", "fusion_engine.cli", "serve"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode != 0
    assert "pip install 'fusion-engine[otel]'" in ran.stderr


@pytest.mark.parametrize("stream", [False, True])
def test_fuse_requests_are_traced_alike(
    gateway: GatewayProcess, fake: FakeUpstream, collector: Collector, stream: bool
) -> None:
    """``POST /fuse``, whole or streamed as progress events: the same tree under its server
    span, the fusion span ending after the last event."""
    script_panel(fake)
    trace_id, _, header = traceparent()
    reply = httpx.post(
        f"{gateway.base_url}/fuse",
        json={"panel": "trio", "prompt": "Capital of France?", "stream": stream},
        headers={"Authorization": f"Bearer {KEY}", "traceparent": header}, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    server, fusion, members, judge = fused_tree(collector, trace_id)
    assert server.name == "POST /fuse" and fusion.parent_span_id == server.span_id
    assert [attrs(span)["fusion.member.index"] for span in members] == [0, 1, 2]
    assert judge.parent_span_id == fusion.span_id
    assert fusion.end_time_unix_nano >= judge.end_time_unix_nano
    assert attrs(fusion)["fusion.cost_usd"] > 0


def test_a_cache_hit_is_a_fusion_span_without_calls(
    upstream: FakeInThread, fake: FakeUpstream, collector: Collector
) -> None:
    """Answered from the cache (whole or streamed): the fusion span says ``hit`` and has no
    ``chat`` spans under it."""
    script_panel(fake)
    body = {"model": "fusion/trio", "seed": 7, "messages": [{"role": "user", "content": "Hi"}]}
    with GatewayProcess({**tracing_env(upstream, collector), "FUSION_CACHE": "memory"}) as process:
        client(process).chat.completions.create(**body)  # type: ignore[call-overload]
        for stream in (False, True):
            trace_id, _, header = traceparent()
            created = client(process).chat.completions.create(
                **body, stream=stream, extra_headers={"traceparent": header}
            )  # type: ignore[call-overload]
            if stream:
                assert list(created)
            collector.wait_for(
                lambda _, t=trace_id: any(s.kind == SERVER for s in collector.trace(t))
            )
            spans = collector.trace(trace_id)
            (fusion,) = named(spans, "fusion trio")
            assert attrs(fusion)["fusion.cache"] == "hit"
            assert [span.name for span in spans if span.kind == CLIENT] == []
