"""The snippets of README's "Use it from your agent" run as printed, with the real clients.

Each Python block (OpenAI Agents SDK, pydantic-ai, LangChain, LiteLLM) is extracted from the
README, pointed at a real ``fusion serve`` that demands a key (on the fake upstream, so the fused
answer is the judge's echo of its prompt) and run in a fresh interpreter with nothing but PATH,
HOME and ``FUSION_API_KEY``. The judge must have been called once per answer the snippet prints.
The Claude Code block runs in bash as printed, and Codex runs the printed ``codex exec`` with the
printed config.toml, each with a HOME of its own (tests/test_agents_e2e.py drives both agents
through tool calls).

Opt-in like the agent CLIs, because the libraries are extras (``pip install -e '.[clients,agents]'``)
and the CLIs come from npm: ``AGENTS_E2E=1 pytest -m agents tests/test_readme_agents.py``.
Without the variable every test is skipped with that reason; with it, a missing library or CLI is
a skip, or a failure under ``CI=true``. The CLIs are looked up in ``AGENTS_BIN_DIR`` (default
``.agents/npm/node_modules/.bin``, where ``make agents-e2e`` installs them), then on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from .helpers import FakeInThread, GatewayProcess, agent_cli, require_agent_library
from .test_readme import (
    AGENTS_HEADING,
    KEY_VARIABLE,
    PRINTED_BASE,
    README,
    SNIPPET_KEY,
    agent_snippet,
    claude_code_block,
    codex_config,
    judge_echo,
    start_keyed_gateway,  # noqa: F401 - the `keyed_gateway` fixture: a gateway demanding SNIPPET_KEY
)

pytestmark = pytest.mark.agents

JUDGE = "qwen/qwen3.7-plus"


class Snippet(NamedTuple):
    """A README block: the bold name its paragraph starts with, the module it needs, and how
    many fused answers it prints."""

    marker: str
    module: str
    answers: int


SNIPPETS = {
    "agents-sdk": Snippet("**OpenAI Agents SDK**", "agents", 2),
    "pydantic-ai": Snippet("**pydantic-ai**", "pydantic_ai", 2),
    "langchain": Snippet("**LangChain**", "langchain_openai", 1),
    "litellm": Snippet("**LiteLLM SDK**", "litellm", 1),
}


def cli_env(cli: Path, home: Path) -> dict[str, str]:
    """What a user's shell would hold: the CLI (and node) on PATH, a HOME, the gateway key."""
    return {
        "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        KEY_VARIABLE: SNIPPET_KEY,
    }


@pytest.mark.parametrize(
    "name",
    [
        "agents-sdk",
        "pydantic-ai",
        "langchain",
        "litellm",
    ],
)
def test_client_snippet_prints_the_fused_answer(
    keyed_gateway: tuple[GatewayProcess, FakeInThread], name: str, tmp_path: Path
) -> None:
    snippet = SNIPPETS[name]
    require_agent_library(snippet.module)
    process, upstream = keyed_gateway
    upstream.fake.reset()
    code = agent_snippet("python", snippet.marker).replace(PRINTED_BASE, process.base_url)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        KEY_VARIABLE: SNIPPET_KEY,
        # LiteLLM fetches its price list from GitHub on import unless told not to (offline here,
        # that is three failed attempts and ~8 s); it never carries the key.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count(judge_echo()) == snippet.answers, ran.stdout
    assert len(upstream.fake.requests_for(JUDGE)) == snippet.answers
    # The Agents SDK snippet turns tracing off; with it on, traces (carrying the key) would be
    # sent to api.openai.com, which fails here with "[non-fatal] Tracing request failed".
    assert "Tracing" not in ran.stderr, ran.stderr


def test_claude_code_block_prints_the_fused_answer(
    keyed_gateway: tuple[GatewayProcess, FakeInThread], tmp_path: Path
) -> None:
    """README's Claude Code block, run in bash as printed: `claude -p` answers with the panel."""
    claude = agent_cli("claude")
    process, upstream = keyed_gateway
    upstream.fake.reset()
    project = tmp_path / "project"
    project.mkdir()
    env = cli_env(claude, tmp_path)
    # A broken route must fail in seconds, not after Claude Code's ten retries.
    env["CLAUDE_CODE_MAX_RETRIES"] = "1"
    ran = subprocess.run(
        ["bash", "-c", claude_code_block().replace(PRINTED_BASE, process.base_url)],
        capture_output=True, text=True, timeout=180, cwd=project, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(judge_echo()), ran.stdout
    assert upstream.fake.requests_for(JUDGE)


def test_codex_config_and_command_print_the_fused_answer(
    keyed_gateway: tuple[GatewayProcess, FakeInThread], tmp_path: Path
) -> None:
    """README's config.toml in ~/.codex and its `codex exec` line, run as printed in a git
    repository: Codex answers with the panel over /v1/responses."""
    codex = agent_cli("codex")
    process, upstream = keyed_gateway
    upstream.fake.reset()
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "config.toml").write_text(codex_config(process.base_url))
    command = re.search(r"`(codex exec [^`]+)`", README[README.index("**Codex CLI**") :])
    assert command
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    ran = subprocess.run(
        ["bash", "-c", command.group(1)], capture_output=True, text=True, timeout=180,
        cwd=project, env=cli_env(codex, tmp_path), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(judge_echo()), ran.stdout
    assert upstream.fake.requests_for(JUDGE)


def test_every_python_snippet_is_run() -> None:
    """A Python block added to "Use it from your agent" without an entry here fails."""
    section = README[README.index(AGENTS_HEADING) :]
    section = section[: section.index("\n## ", 1)]
    assert section.count("```python\n") == len(SNIPPETS)
    assert all(snippet.marker in section for snippet in SNIPPETS.values())
