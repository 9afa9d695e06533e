"""Claude Code itself against ``/v1/messages``: a fused tool round trip, a passed-through answer.

Needs the Claude Code binary (``npm i @anthropic-ai/claude-code@latest``; 2.1.332 was
recorded): ``CLAUDE_CODE_BIN`` names it, else ``claude`` on ``PATH``; skipped without it. It
runs offline against the gateway on the fake upstream (``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``
keeps it off the network) with a ``HOME`` of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    E2E_FILES,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

CLAUDE = os.environ.get("CLAUDE_CODE_BIN") or shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed")
FILES = E2E_FILES / "messages"
KEY = "claude-code-key"


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    env = gateway_env(
        upstream.fake,
        KEY,
        panels=FILES / "panels",
        config=FILES / "gateway.yaml",
        FUSION_RELOAD_INTERVAL_S="0",
    )
    process = GatewayProcess(env)
    yield process
    process.stop()


def claude(gateway: GatewayProcess, home: Path, prompt: str, *args: str) -> str:
    """Claude Code's printed answer to ``prompt`` (``-p``), checking it exited cleanly."""
    assert CLAUDE is not None
    project = home / "project"
    project.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.base_url,
        "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    done = subprocess.run(
        [CLAUDE, "-p", prompt, *args],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_fused_tool_round_trip(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    """The judge asks for Bash; Claude Code runs it and sends the output back; the final answer
    is printed."""
    arguments = '{"command": "echo hello-from-tool", "description": "Print a test string"}'
    fake.script(
        "b/judge",
        Reply(tool_calls=[FakeToolCall("Bash", arguments)], chunk_size=7),
        Reply(text="The command printed: hello-from-tool", chunk_size=5),
    )
    out = claude(
        gateway, tmp_path, "run echo", "--model", "fusion/budget", "--allowedTools", "Bash"
    )
    assert out.strip() == "The command printed: hello-from-tool"
    first, second = fake.requests_for("b/judge")
    assert len(first.body["tools"]) >= 10  # Claude Code's tools, deferred ones included
    tool_message = next(m for m in second.body["messages"] if m["role"] == "tool")
    assert tool_message["content"] == "hello-from-tool"


def test_a_passed_through_model(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.script("plain/model", Reply(text="hi from the provider", chunk_size=3))
    out = claude(gateway, tmp_path, "say hi", "--model", "plain/model")
    assert out.strip() == "hi from the provider"
