"""Codex CLI itself against ``/v1/responses``: a fused tool round trip (Codex runs the command
the judge asks for and sends its output back), and a passed-through answer.

Needs the Codex binary (``npm i @openai/codex@0.171.0``, the version recorded): ``CODEX_BIN``
names it, else ``codex`` on ``PATH``; skipped without it. It runs offline against the gateway on
the fake upstream, in a read-only sandbox, with a ``CODEX_HOME`` of its own.
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

CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")
pytestmark = pytest.mark.skipif(CODEX is None, reason="Codex CLI is not installed")
KEY = "codex-key"
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
JUDGE = "e2e/judge"
#: The command's output: its text is not in the prompt (which says ``$((40+2))``), so a judge
#: request holding it proves Codex ran the command and sent the result back.
OUTPUT = "TOOL-RAN-42"


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeInThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # Codex sends a 40 KB prompt and a dozen tools on every turn.
    config = tmp_path_factory.mktemp("codex") / "gateway.yaml"
    config.write_text(
        (E2E_FILES / "gateway.yaml").read_text().replace(
            "limits: {max_body_bytes: 65536, max_messages: 20, max_tools: 4, max_members: 16}",
            "limits: {max_body_bytes: 4194304, max_messages: 200, max_tools: 64, max_members: 16}",
        )
    )  # fmt: skip
    process = GatewayProcess(gateway_env(upstream.fake, KEY, config=config))
    yield process
    process.stop()


def codex(gateway: GatewayProcess, home: Path, model: str, prompt: str) -> str:
    """Codex's printed answer to ``prompt`` (``codex exec``), checking it exited cleanly."""
    assert CODEX is not None
    codex_home, work = home / ".codex", home / "work"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "fusion"\n'
        "[model_providers.fusion]\n"
        'name = "Fusion Engine"\n'
        f'base_url = "{gateway.base_url}/v1"\n'
        'env_key = "FUSION_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"  # a failure shows at once instead of after ~30 attempts
        "stream_max_retries = 0\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "FUSION_KEY": KEY,
    }
    done = subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", "-s", "read-only", prompt],
        env=env, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_codex_runs_the_tool_the_fused_panel_asks_for(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    for slug in MEMBERS:
        fake.script(slug, Reply(text="Run the command."))
    fake.script_matching(JUDGE, OUTPUT, Reply(text=f"The command printed {OUTPUT}.", chunk_size=4))
    run = FakeToolCall(name="exec_command", arguments='{"cmd": "echo TOOL-RAN-$((40+2))"}')
    fake.script(JUDGE, Reply(tool_calls=[run], chunk_size=6))
    answer = codex(
        gateway, tmp_path, "fusion/trio", "run echo TOOL-RAN-$((40+2)) and say what it printed"
    )
    assert answer == f"The command printed {OUTPUT}."
    first, second = fake.requests_for(JUDGE)
    assert first.body["stream"] is True
    names = [tool["function"]["name"] for tool in first.body["tools"]]
    assert "exec_command" in names and any("__" in name for name in names)  # namespaces flat
    tool_messages = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert any(OUTPUT in str(message["content"]) for message in tool_messages)
    assert all("encrypted_content" not in str(request.body) for request in fake.received)


def test_codex_through_a_passed_through_model(
    gateway: GatewayProcess, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.script("vendor/chat", Reply(text="Hello from the provider.", chunk_size=5))
    assert codex(gateway, tmp_path, "vendor/chat", "say hello") == "Hello from the provider."
    [request] = fake.requests_for("vendor/chat")
    assert request.body["stream"] is True and request.body["stream_options"] == {
        "include_usage": True
    }
