"""Real agents through the gateway: Claude Code (Anthropic Messages), the Codex CLI (OpenAI
Responses) and the OpenAI Agents SDK (Responses, and Chat Completions on request).

Each test starts a real ``fusion serve`` on the fake upstream, with the panel ``agent`` whose judge
is scripted to first propose a tool call and, once the conversation holds that tool's output,
answer with a final text quoting it. The agent must then really run the tool (a shell command
for the CLIs, a Python ``@function_tool`` for the SDK), send its result back through the gateway
(the fake upstream must see it) and print the fused answer. The command prints
``fusion-tool-<token>`` while its own text (``printf 'fusion-tool-%s\\n' <token>``) does not
contain that string, so the judge's rule can only match the tool's real output. Claude Code and
Codex also run once on a provider's model id, which the gateway passes through (Claude Code then
sends its key in ``x-api-key`` rather than as a Bearer token).

Everything stays on 127.0.0.1: each agent gets a fresh HOME / CODEX_HOME, an environment built from
scratch (no inherited keys) and the switches that turn off its telemetry, update checks and plugin
fetches. When ``strace`` is installed every ``connect()`` of the agent CLIs is traced and any
address other than loopback fails the test.

Opt-in, because the CLIs come from npm (~800 MB): ``make agents-e2e`` installs them into
``.agents/`` (and the ``agents`` extra into the venv) and runs this file with ``AGENTS_E2E=1``;
``make test`` skips it with that reason. When opted in, a missing agent is a skip, or a failure
under ``CI=true``. Each test prints the agent's version and wall time (``-s`` shows them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply
from fusion_engine.testing.script import conversation_text

from .helpers import (
    E2E_FILES,
    FakeInThread,
    GatewayProcess,
    agent_cli,
    gateway_env,
    require_agent_library,
    require_agents_opt_in,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

pytestmark = pytest.mark.agents

AGENT_FILES = E2E_FILES / "agents"
KEY = "agents-e2e-key"
PANEL = "agent"
MODEL = f"fusion/{PANEL}"
MEMBERS = ("e2e/agent-one", "e2e/agent-two")
JUDGE = "e2e/agent-judge"
#: Claude Code's background ("haiku") model: a passthrough id, so a side request it may make never
#: takes the judge's scripted replies.
SMALL_MODEL = "e2e/agent-small"
#: A provider's model id (no fusion/ prefix): the gateway passes requests for it through.
PLAIN = "e2e/agent-plain"
PLAIN_ANSWER = "Hello from the provider, passed through."
#: The judge's answer to a conversation that lacks the tool's output.
NO_OUTPUT = "The judge saw no tool output."
PROMPT = "Run the probe command with your shell tool and tell me exactly what it printed."
#: Bounds one agent run; a 404 or a broken stream must fail in well under this.
AGENT_TIMEOUT_S = float(os.environ.get("AGENTS_E2E_TIMEOUT_S", "180"))


def require_module(module: str, package: str) -> str:
    """The installed version of ``package``, whose import name is ``module``."""
    require_agent_library(module)
    return importlib.metadata.version(package)


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    require_agents_opt_in()
    env = gateway_env(
        upstream.fake, KEY, panels=AGENT_FILES / "panels", config=AGENT_FILES / "gateway.yaml"
    )
    process = GatewayProcess(env)
    yield process
    process.stop()


class Probe(NamedTuple):
    """What one test asks the agent to run, and what proves it ran."""

    output: str
    """What the tool prints; nothing else in the conversation contains it."""
    command: str
    """A shell command printing ``output`` whose own text does not contain it."""
    final: str
    """The judge's final answer, quoting ``output``."""


def new_probe() -> Probe:
    token = secrets.token_hex(6)
    output = f"fusion-tool-{token}"
    return Probe(
        output=output,
        command=f"printf 'fusion-tool-%s\\n' {token}",
        final=f"Fused answer: the probe printed {output}.",
    )


def script_panel(fake: FakeUpstream, probe: Probe, tool: str, arguments: dict[str, Any]) -> None:
    """Members answer in plain text; the judge first calls ``tool``, then, once the tool's output
    is in the conversation, answers ``probe.final`` (without it: ``NO_OUTPUT``)."""
    for member in MEMBERS:
        fake.script(member, Reply(text="Run the probe, then report its output word for word."))
    # Any later judge call without the output ends the run with a text (not another tool call),
    # so a lost tool result fails fast instead of looping until the agent's timeout.
    fake.script(
        JUDGE,
        Reply(tool_calls=[FakeToolCall(tool, json.dumps(arguments))]),
        Reply(text=NO_OUTPUT),
    )
    fake.script_matching(JUDGE, re.escape(probe.output), Reply(text=probe.final))
    fake.script(SMALL_MODEL, Reply(text="ok"))


def assert_round_trip(fake: FakeUpstream, probe: Probe, diagnostics: str) -> None:
    """The judge proposed the call, then got the tool's real output back through the gateway."""
    judge_requests = fake.requests_for(JUDGE)
    with_output = [r for r in judge_requests if probe.output in conversation_text(r.body)]
    assert judge_requests, f"the gateway never asked the judge\n{diagnostics}"
    assert with_output, f"the tool's output never reached the upstream\n{diagnostics}"
    assert probe.output not in conversation_text(judge_requests[0].body), diagnostics


def report(agent: str, version: str, seconds: float, fake: FakeUpstream) -> None:
    """One line per run for the CI log (make agents-e2e runs pytest with -s)."""
    print(
        f"\n[agents-e2e] {agent} {version}: {seconds:.1f} s, "
        f"{len(fake.requests_for(JUDGE))} judge calls, {len(fake.received)} upstream calls"
    )


# --- running a CLI agent -----------------------------------------------------------------------


class AgentRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    #: Every (address, port) the agent connected to over IP; None: not traced (no strace).
    connections: list[tuple[str, int]] | None

    def outside(self) -> list[str]:
        """The addresses it tried to reach beyond loopback (a DNS server counts)."""
        return sorted({f"{a}:{p}" for a, p in self.connections or [] if not _loopback(a)})


def _loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return (mapped or parsed).is_loopback


_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), "
    r'(?:sin_addr=inet_addr\("([^"]+)"\)|[^}]*inet_pton\(AF_INET6, "([^"]+)")'
)


def traced_connections(trace: str) -> list[tuple[str, int]]:
    """The IPv4/IPv6 destinations in an ``strace -e trace=connect`` log, in order."""
    return [(m.group(2) or m.group(3), int(m.group(1))) for m in _CONNECT.finditer(trace)]


def run_agent(command: Sequence[str], env: dict[str, str], cwd: Path, trace: Path) -> AgentRun:
    """Run an agent CLI to its end (bounded by AGENT_TIMEOUT_S, killed with its whole process
    group on timeout), tracing its connections when strace is available."""
    strace = shutil.which("strace")
    full = (
        [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *command]
        if strace
        else [*command]
    )
    started = time.monotonic()
    process = subprocess.Popen(
        full,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=AGENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{command[0]} did not finish in {AGENT_TIMEOUT_S:.0f} s\n"
            f"--- stdout\n{stdout}\n--- stderr\n{stderr[-8000:]}"
        )
    finally:
        # The agent's own session: whatever it left running (a backgrounded shell) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    seconds = time.monotonic() - started
    connections = traced_connections(trace.read_text(errors="replace")) if strace else None
    return AgentRun(process.returncode, stdout, stderr, seconds, connections)


def base_env(home: Path) -> dict[str, str]:
    """An environment built from scratch: no key or base URL of the caller's leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }


def diagnostics(run: AgentRun, gateway: GatewayProcess, fake: FakeUpstream) -> str:
    """What CI logs need to explain a failed run."""
    upstream = [(r.model, r.path) for r in fake.received]
    to_gateway = [c for c in run.connections or [] if c == ("127.0.0.1", gateway.port)]
    traced = "not traced (no strace)" if run.connections is None else f"{run.connections}"
    return (
        f"exit {run.returncode} after {run.seconds:.1f} s; upstream calls {upstream}\n"
        f"connections: {len(to_gateway)} to the gateway; all: {traced}\n"
        f"--- agent stdout\n{run.stdout[-8000:]}\n--- agent stderr\n{run.stderr[-8000:]}\n"
        f"--- gateway log (tail)\n{gateway.output()[-8000:]}"
    )


def agent_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh HOME and working folder for one agent run."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


def version_of(binary: Path, env: dict[str, str]) -> str:
    reply = subprocess.run(
        [str(binary), "--version"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return reply.stdout.strip() or reply.stderr.strip()


def assert_clean_exit(run: AgentRun, gateway: GatewayProcess, fake: FakeUpstream) -> str:
    """The agent exited 0 without leaving 127.0.0.1; the diagnostics for further asserts."""
    explained = diagnostics(run, gateway, fake)
    assert not run.outside(), f"connections left 127.0.0.1: {run.outside()}\n{explained}"
    assert run.returncode == 0, explained
    return explained


def assert_agent_run(
    run: AgentRun, probe: Probe, gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    explained = assert_clean_exit(run, gateway, fake)
    assert_round_trip(fake, probe, explained)
    assert probe.final in run.stdout, explained


def assert_passthrough_run(run: AgentRun, gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """The agent printed the provider's answer, asked for under the model id it was given."""
    explained = assert_clean_exit(run, gateway, fake)
    assert fake.requests_for(PLAIN), f"the provider's model was never asked\n{explained}"
    assert not fake.requests_for(JUDGE), explained
    assert PLAIN_ANSWER in run.stdout, explained


# --- Claude Code (POST /v1/messages) ------------------------------------------------------------


def claude_run(
    gateway: GatewayProcess,
    fake: FakeUpstream,
    tmp_path: Path,
    model: str,
    key_variable: str = "ANTHROPIC_AUTH_TOKEN",
) -> AgentRun:
    """`claude -p PROMPT` on ``model``, allowed to run Bash, in a fresh HOME; the run's line is
    reported. ``key_variable`` carries the gateway key: ``ANTHROPIC_AUTH_TOKEN`` sends it as a
    Bearer token, ``ANTHROPIC_API_KEY`` in ``x-api-key``."""
    claude = agent_cli("claude")
    home, work = agent_folders(tmp_path)
    env = {
        **base_env(home),
        "ANTHROPIC_BASE_URL": gateway.base_url,
        key_variable: KEY,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": SMALL_MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": SMALL_MODEL,
        # No telemetry, error reports, update checks or bootstrap calls to api.anthropic.com.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # Its default is 10 retries (minutes on a persistent error); a broken route fails fast.
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    version = version_of(claude, env)
    command = [str(claude), "-p", PROMPT, "--model", model, "--allowedTools", "Bash"]
    run = run_agent(command, env, work, tmp_path / "claude.strace")
    report(f"claude-code ({model})", version, run.seconds, fake)
    return run


def test_claude_code_runs_bash_through_a_fused_panel(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """`claude -p` on fusion/agent: the judge's Bash call runs, its result goes back through
    /v1/messages, and the fused answer is printed."""
    probe = new_probe()
    script_panel(fake, probe, "Bash", {"command": probe.command, "description": "Print the probe"})
    run = claude_run(gateway, fake, tmp_path, MODEL)
    assert_agent_run(run, probe, gateway, fake)
    first = fake.requests_for(JUDGE)[0]
    assert len(first.body["tools"]) >= 10  # Claude Code's tools, deferred ones included


def test_claude_code_through_a_passed_through_model(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """`claude -p` on a provider's model id, its key in ``x-api-key``: /v1/messages passes it
    through and the provider's streamed answer is printed."""
    fake.script(PLAIN, Reply(text=PLAIN_ANSWER, chunk_size=3))
    fake.script(SMALL_MODEL, Reply(text="ok"))
    run = claude_run(gateway, fake, tmp_path, PLAIN, key_variable="ANTHROPIC_API_KEY")
    assert_passthrough_run(run, gateway, fake)


# --- Codex CLI (POST /v1/responses) -------------------------------------------------------------


def codex_config(gateway: GatewayProcess, model: str) -> str:
    """config.toml: the gateway as a Responses provider; analytics, OpenTelemetry export,
    feedback, update checks and the plugin/app catalogues (api.github.com, chatgpt.com) off.

    Measured with strace (codex 0.171.0, exec): ``features.plugins = false`` is the switch that
    matters, without it Codex looks up the plugin catalogue's host; the rest are off for good
    measure, as interactive use and other auth modes reach more hosts."""
    return f"""\
model = "{model}"
model_provider = "fusion"
check_for_update_on_startup = false

[model_providers.fusion]
name = "Fusion Engine"
base_url = "{gateway.base_url}/v1"
env_key = "FUSION_API_KEY"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1
stream_idle_timeout_ms = 60000

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
metrics_exporter = "none"
trace_exporter = "none"

[features]
plugins = false
remote_plugin = false
apps = false
"""


def codex_run(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path, model: str
) -> tuple[AgentRun, str]:
    """`codex exec PROMPT` on ``model`` in a fresh HOME and CODEX_HOME, its sandbox off; the run
    and the last message it wrote (``-o``). The run's line is reported."""
    codex = agent_cli("codex")
    home, work = agent_folders(tmp_path)
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(gateway, model))
    env = {**base_env(home), "CODEX_HOME": str(codex_home), "FUSION_API_KEY": KEY}
    version = version_of(codex, env)
    last_message = tmp_path / "last-message.txt"
    command = [
        str(codex),
        "exec",
        "--skip-git-repo-check",
        "--ephemeral",
        # bubblewrap may be missing; the test's own temp folder is the sandbox.
        "--dangerously-bypass-approvals-and-sandbox",
        "--color",
        "never",
        "-o",
        str(last_message),
        PROMPT,
    ]
    run = run_agent(command, env, work, tmp_path / "codex.strace")
    report(f"codex ({model})", version, run.seconds, fake)
    return run, last_message.read_text() if last_message.exists() else ""


def test_codex_runs_a_shell_command_through_a_fused_panel(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """`codex exec` on fusion/agent: the judge's exec_command runs, its output goes back through
    /v1/responses, and the fused answer is printed."""
    probe = new_probe()
    script_panel(fake, probe, "exec_command", {"cmd": probe.command})
    run, last_message = codex_run(gateway, fake, tmp_path, MODEL)
    assert_agent_run(run, probe, gateway, fake)
    assert probe.final in last_message
    first = fake.requests_for(JUDGE)[0]
    assert first.body["stream"] is True
    names = [tool["function"]["name"] for tool in first.body["tools"]]
    assert "exec_command" in names and any("__" in name for name in names)  # namespaces flat
    # Codex's reasoning items carry encrypted_content for OpenAI only; none reaches a provider.
    assert all("encrypted_content" not in str(request.body) for request in fake.received)


def test_codex_through_a_passed_through_model(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """`codex exec` on a provider's model id: /v1/responses passes it through (streamed, with
    usage asked for) and the provider's answer is printed."""
    fake.script(PLAIN, Reply(text=PLAIN_ANSWER, chunk_size=5))
    run, last_message = codex_run(gateway, fake, tmp_path, PLAIN)
    assert_passthrough_run(run, gateway, fake)
    assert PLAIN_ANSWER in last_message
    [request] = fake.requests_for(PLAIN)
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}


# --- OpenAI Agents SDK (POST /v1/responses, POST /v1/chat/completions) --------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["responses", "chat_completions", "alias"])
async def test_agents_sdk_calls_a_function_tool_through_a_fused_panel(
    gateway: GatewayProcess,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    api: str,
    stream: bool,
) -> None:
    """Runner.run on fusion/agent (the SDK's default Responses model, its Chat Completions model,
    or the name ``fusion-agent`` through the SDK's own provider): the judge's call runs the
    @function_tool, its result goes back through the gateway, and the run's final output is the
    fused answer."""
    version = require_module("agents", "openai-agents")
    # Traces would otherwise go to api.openai.com, carrying the gateway key, whatever base URL.
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIProvider,
        OpenAIResponsesModel,
        RunConfig,
        Runner,
        function_tool,
    )
    from openai import AsyncOpenAI

    probe = new_probe()
    token = probe.output.removeprefix("fusion-tool-")
    script_panel(fake, probe, "run_probe", {"token": token})
    ran: list[str] = []

    @function_tool
    def run_probe(token: str) -> str:
        """Run the probe for a token and return what it printed."""
        ran.append(token)
        return f"fusion-tool-{token}"

    client = AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEY, max_retries=0, timeout=60)
    model: str | OpenAIResponsesModel | OpenAIChatCompletionsModel
    config = RunConfig(tracing_disabled=True)
    if api == "responses":
        model = OpenAIResponsesModel(model=MODEL, openai_client=client)
    elif api == "chat_completions":
        model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    else:
        # A plain model name through the SDK's own provider (Responses by default): the slash
        # form would be read as a provider prefix, so it takes the fusion-<panel> alias.
        model = f"fusion-{PANEL}"
        config = RunConfig(
            model_provider=OpenAIProvider(openai_client=client), tracing_disabled=True
        )
    agent = Agent(
        name="probe",
        instructions="Use the run_probe tool, then report its output.",
        model=model,
        tools=[run_probe],
    )
    started = time.monotonic()
    try:
        if stream:
            streamed = Runner.run_streamed(agent, PROMPT, run_config=config)
            async for _ in streamed.stream_events():
                pass
            final = streamed.final_output
        else:
            final = (await Runner.run(agent, PROMPT, run_config=config)).final_output
    except Exception as error:
        pytest.fail(
            f"{type(error).__name__}: {error}\n--- gateway log (tail)\n{gateway.output()[-8000:]}"
        )
    finally:
        await client.close()
    report(
        f"openai-agents ({api}, {'stream' if stream else 'json'})",
        version,
        time.monotonic() - started,
        fake,
    )
    explained = f"final output {final!r}\n--- gateway log (tail)\n{gateway.output()[-4000:]}"
    assert ran == [token], explained
    assert_round_trip(fake, probe, explained)
    assert final == probe.final
