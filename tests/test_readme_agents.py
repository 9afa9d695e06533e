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

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from .helpers import ROOT, FakeInThread, GatewayProcess
from .test_readme import (
    AGENTS_HEADING,
    KEY_VARIABLE,
    PRINTED_BASE,
    README,
    agent_snippet,
    claude_code_block,
    codex_config,
    judge_echo,
)

pytestmark = pytest.mark.agents

OPT_IN = "AGENTS_E2E"
AGENT_BIN = Path(
    os.environ.get("AGENTS_BIN_DIR", ROOT / ".agents" / "npm" / "node_modules" / ".bin")
)
KEY = "readme-clients-key"
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


def require_opt_in() -> None:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"README agent snippets are opt-in: {OPT_IN}=1 after installing the `clients` and "
            "`agents` extras (and the agent CLIs: make agents-e2e)"
        )


def missing(message: str) -> None:
    """A missing client: a skip, or a failure under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(module: str) -> None:
    """Skip unless opted in; then a missing library is a skip, or a failure under CI."""
    require_opt_in()
    if importlib.util.find_spec(module) is None:
        missing(f"{module} is not installed: pip install -e '.[clients,agents]'")


def agent_cli(name: str) -> Path:
    """The agent CLI ``name`` from AGENT_BIN, else PATH (opt-in, like the libraries)."""
    require_opt_in()
    found = shutil.which(name, path=f"{AGENT_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        missing(f"{name} is not installed: make agents-e2e puts it in {AGENT_BIN}")
    assert found is not None
    return Path(found)


def cli_env(cli: Path, home: Path) -> dict[str, str]:
    """What a user's shell would hold: the CLI (and node) on PATH, a HOME, the gateway key."""
    return {
        "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        KEY_VARIABLE: KEY,
    }


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[GatewayProcess, FakeInThread]]:
    upstream = FakeInThread()
    process = GatewayProcess(
        {
            "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "OPENROUTER_API_KEY": "x",
            "FUSION_SERVER_API_KEYS": KEY,
            "FUSION_CACHE": "off",
        }
    )
    yield process, upstream
    process.stop()
    upstream.close()


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
    gateway: tuple[GatewayProcess, FakeInThread], name: str, tmp_path: Path
) -> None:
    snippet = SNIPPETS[name]
    require(snippet.module)
    process, upstream = gateway
    upstream.fake.reset()
    code = agent_snippet("python", snippet.marker).replace(PRINTED_BASE, process.base_url)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        KEY_VARIABLE: KEY,
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
    gateway: tuple[GatewayProcess, FakeInThread], tmp_path: Path
) -> None:
    """README's Claude Code block, run in bash as printed: `claude -p` answers with the panel."""
    claude = agent_cli("claude")
    process, upstream = gateway
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
    gateway: tuple[GatewayProcess, FakeInThread], tmp_path: Path
) -> None:
    """README's config.toml in ~/.codex and its `codex exec` line, run as printed in a git
    repository: Codex answers with the panel over /v1/responses."""
    codex = agent_cli("codex")
    process, upstream = gateway
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
