"""The README's commands work as printed (against a gateway on the fake upstream)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import ROOT, FakeInThread, GatewayProcess

README = (ROOT / "README.md").read_text()
PRINTED_BASE = "http://127.0.0.1:8000"
AGENTS_HEADING = "## Use it from your agent"
#: The variable the agent snippets read the gateway key from (Codex's ``env_key`` names it too).
KEY_VARIABLE = "FUSION_API_KEY"
#: The key of the keyed gateway the agent snippets run against.
SNIPPET_KEY = "readme-snippet-key"


def code_block(after_heading: str, language: str, *, after_text: str = "") -> str:
    """The first ```language block following a heading (and a line of text, if given)."""
    section = README[README.index(after_heading) :]
    if after_text:
        section = section[section.index(after_text) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {after_heading!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    upstream = FakeInThread()
    process = GatewayProcess(
        {"OPENROUTER_BASE_URL": upstream.fake.base_url, "OPENROUTER_API_KEY": "x"}
    )
    yield process
    process.stop()
    upstream.close()


def test_curl_examples_work(gateway: GatewayProcess) -> None:
    """Each curl command of "Try it without a key" succeeds and prints what it promises."""
    script = code_block("### Try it without a key", "sh", after_text="from another terminal")
    commands = script.replace("\\\n", "").strip().splitlines()
    assert len(commands) >= 4
    outputs = []
    for command in commands:
        assert command.startswith("curl ")
        ran = subprocess.run(
            ["bash", "-c", command.replace(PRINTED_BASE, gateway.base_url) + " --fail-with-body"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        outputs.append(ran.stdout)
    models, completion, stream, fused, health = outputs
    assert "fusion/budget" in {m["id"] for m in json.loads(models)["data"]}
    assert json.loads(completion)["object"] == "chat.completion"
    # What the README warns of: the fake's "answer" echoes the judge's prompt, which quotes the
    # members' echoes of the question; nothing is answered for real.
    answer = json.loads(completion)["choices"][0]["message"]["content"]
    assert answer.startswith("qwen/qwen3.7-plus answer: ")
    assert "xiaomi/mimo-v2.5 answer: Why is the sky blue?" in answer
    assert stream.rstrip().endswith("data: [DONE]")
    assert len(json.loads(fused)["panel_responses"]) == 3
    assert json.loads(health)["status"] == "ok"


def test_quick_start_python_runs(gateway: GatewayProcess) -> None:
    """The 30-second openai example runs and prints the answer, usage and fusion detail."""
    code = code_block("## In 30 seconds", "python").replace(PRINTED_BASE, gateway.base_url)
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert ran.returncode == 0, ran.stderr
    assert "'panel': 'budget'" in ran.stdout
    assert "cost=" in ran.stdout


def test_library_example_runs() -> None:
    """The "As a library" example runs against the fake upstream and prints each member."""
    upstream = FakeInThread()
    try:
        code = code_block("## As a library", "python")
        env = {
            "PATH": "/usr/bin:/bin",
            "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "OPENROUTER_API_KEY": "x",
        }
        ran = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )
    finally:
        upstream.close()
    assert ran.returncode == 0, ran.stderr
    assert "deepseek/deepseek-v4-flash True" in ran.stdout
    assert "total cost:" in ran.stdout


def test_eval_quick_start_runs(tmp_path: Path) -> None:
    """The eval quick start produces its report, chart and records (against the fake)."""
    command = code_block("## Does fusion pay off?", "sh").strip().splitlines()[-1]
    assert command.startswith(".venv/bin/python evals/run_eval.py")
    shutil.copytree(ROOT / "evals" / "datasets", tmp_path / "evals" / "datasets")
    argv = command.replace(".venv/bin/python", sys.executable).replace(
        "evals/run_eval.py", str(ROOT / "evals" / "run_eval.py")
    )
    upstream = FakeInThread()
    try:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "OPENROUTER_API_KEY": "x",
            "FUSION_PANELS_DIR": str(ROOT / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        }
        ran = subprocess.run(
            [*shlex.split(argv), "--no-progress"], capture_output=True, text=True, timeout=120,
            cwd=tmp_path, env=env,
        )  # fmt: skip
    finally:
        upstream.close()
    assert ran.returncode == 0, ran.stderr
    results = tmp_path / "evals" / "results" / "sample"
    assert "fusion:budget" in (results / "report.md").read_text()
    assert (results / "chart.png").stat().st_size > 1000
    assert len((results / "records.jsonl").read_text().splitlines()) == 5 * 10


def test_printed_panel_is_the_shipped_file() -> None:
    """The README's panel is the shipped panels/<name>.yaml it names, field for field."""
    printed = yaml.safe_load(code_block("## Panels", "yaml"))
    shipped = ROOT / "panels" / f"{printed['name']}.yaml"
    assert shipped.exists(), f"the README shows a panel that is not shipped: {printed['name']}"
    assert printed == yaml.safe_load(shipped.read_text())


def test_try_it_says_the_fake_answer_is_an_echo() -> None:
    """A newcomer trying the fake upstream is told the "answer" is no answer."""
    section = README[README.index("### Try it without a key") : README.index("## The web page")]
    section = " ".join(section.split())  # the prose is wrapped at any word
    assert "echo of the judge's prompt" in section
    assert "not a real answer" in section


# --- "Use it from your agent" -----------------------------------------------------------------
# Claude Code and Codex run these settings in tests/test_agents_e2e.py (`make agents-e2e`); the
# client libraries' snippets run in tests/test_readme_agents.py. The helpers below are what those
# tests read, so a README edit that breaks a snippet fails there, and its shape fails here.


def agent_snippet(language: str, after_text: str) -> str:
    """The first ```language block after ``after_text`` in "Use it from your agent"."""
    return code_block(AGENTS_HEADING, language, after_text=after_text)


def claude_code_block() -> str:
    return agent_snippet("sh", "**Claude Code**")


def claude_code_env(base_url: str, key: str) -> dict[str, str]:
    """The variables README's Claude Code block exports, for the gateway at ``base_url`` (printed
    as 127.0.0.1:8000) whose key is ``key`` (printed as ``"$FUSION_API_KEY"``)."""
    env = {}
    for line in claude_code_block().splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value.replace(PRINTED_BASE, base_url).replace(f"${KEY_VARIABLE}", key)
    return env


def claude_code_command() -> list[str]:
    """README's `claude …` command line, split into words."""
    lines = [line for line in claude_code_block().splitlines() if line.startswith("claude ")]
    assert len(lines) == 1, claude_code_block()
    return shlex.split(lines[0])


def codex_config(base_url: str) -> str:
    """README's ~/.codex/config.toml for the gateway at ``base_url`` (printed as 127.0.0.1:8000)."""
    return agent_snippet("toml", "**Codex CLI**").replace(PRINTED_BASE, base_url)


def test_claude_code_snippet_settings() -> None:
    """The Claude Code block points at the gateway's root (Claude Code adds /v1/messages), passes
    the key as a bearer token, keeps the key from api.anthropic.com and names a panel."""
    env = claude_code_env("http://127.0.0.1:1234", "the-key")
    assert env == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1234",
        "ANTHROPIC_AUTH_TOKEN": "the-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    command = claude_code_command()
    assert command[0] == "claude"
    assert command[command.index("--model") + 1] == "fusion/budget"
    section = README[README.index(AGENTS_HEADING) :]
    assert 'CLAUDE_CODE_MODEL_CAPABILITIES="fusion/budget=-' in section


def test_codex_snippet_settings() -> None:
    """The Codex config selects a provider that speaks Responses to the gateway's /v1, with the
    key from FUSION_API_KEY, and a fused model."""
    config = tomllib.loads(codex_config("http://127.0.0.1:1234"))
    provider = config["model_providers"][config["model_provider"]]
    assert provider["wire_api"] == "responses"
    assert provider["base_url"] == "http://127.0.0.1:1234/v1"
    assert provider["env_key"] == KEY_VARIABLE
    assert config["model"] == "fusion/budget"
    assert "`codex exec " in README[README.index("**Codex CLI**") :]


@pytest.fixture(name="keyed_gateway", scope="module")
def start_keyed_gateway() -> Iterator[tuple[GatewayProcess, FakeInThread]]:
    """``keyed_gateway``: a gateway that demands SNIPPET_KEY, on a fake upstream, with the repo's
    panels (tests/test_readme_agents.py imports it too)."""
    upstream = FakeInThread()
    process = GatewayProcess(
        {
            "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "OPENROUTER_API_KEY": "x",
            "FUSION_SERVER_API_KEYS": SNIPPET_KEY,
            "FUSION_CACHE": "off",
        }
    )
    yield process, upstream
    process.stop()
    upstream.close()


def judge_echo() -> str:
    """How the fused answer of panel budget starts on the fake upstream: its judge echoes."""
    judge = yaml.safe_load((ROOT / "panels" / "budget.yaml").read_text())["judge_model"]
    return f"{judge} answer:"


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer: dict[str, Any] = json.load(reply)
        return answer


def test_claude_code_settings_reach_messages(
    keyed_gateway: tuple[GatewayProcess, FakeInThread],
) -> None:
    """Where Claude Code sends its requests with README's settings (base URL + /v1/messages,
    bearer token), the gateway fuses (the real Claude Code runs in `make agents-e2e`)."""
    gateway, _ = keyed_gateway
    env = claude_code_env(gateway.base_url, SNIPPET_KEY)
    message = post_json(
        env["ANTHROPIC_BASE_URL"] + "/v1/messages?beta=true",
        {
            "model": "fusion/budget",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        {
            "Authorization": f"Bearer {env['ANTHROPIC_AUTH_TOKEN']}",
            "anthropic-version": "2023-06-01",
        },
    )
    assert message["type"] == "message" and message["model"] == "fusion/budget"
    assert message["content"][0]["text"].startswith(judge_echo())


def test_codex_settings_reach_responses(
    keyed_gateway: tuple[GatewayProcess, FakeInThread],
) -> None:
    """Where Codex sends its requests with README's config (base_url + /responses, bearer key
    from env_key), the gateway fuses (the real Codex runs in `make agents-e2e`)."""
    gateway, _ = keyed_gateway
    config = tomllib.loads(codex_config(gateway.base_url))
    provider = config["model_providers"][config["model_provider"]]
    response = post_json(
        provider["base_url"] + "/responses",
        {"model": config["model"], "input": "Hi", "store": False},
        {"Authorization": f"Bearer {SNIPPET_KEY}"},
    )
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["model"] == "fusion/budget"


AGENT_CURLS = ["chat/completions", "responses", "messages"]


def agent_curl(route: str) -> str:
    """README's curl command (continuations joined) for POST /v1/<route>."""
    script = agent_snippet("sh", "With curl, one request per API").replace("\\\n", "")
    commands = script.strip().splitlines()
    assert [
        command.split()[2].removeprefix(PRINTED_BASE + "/v1/") for command in commands
    ] == AGENT_CURLS
    return commands[AGENT_CURLS.index(route)]


@pytest.mark.parametrize("route", AGENT_CURLS)
def test_agent_curl_examples_work(
    keyed_gateway: tuple[GatewayProcess, FakeInThread], route: str
) -> None:
    """Each API's curl of "Use it from your agent" fuses with the key from FUSION_API_KEY."""
    gateway, _ = keyed_gateway
    command = agent_curl(route).replace(PRINTED_BASE, gateway.base_url) + " --fail-with-body"
    ran = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", KEY_VARIABLE: SNIPPET_KEY},
    )  # fmt: skip
    assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
    reply = json.loads(ran.stdout)
    assert reply["model"] == "fusion/budget"
    if route == "chat/completions":
        assert reply["object"] == "chat.completion"
        text = reply["choices"][0]["message"]["content"]
    elif route == "responses":
        assert reply["object"] == "response" and reply["status"] == "completed"
        text = reply["output"][-1]["content"][0]["text"]
    else:
        assert reply["type"] == "message" and reply["stop_reason"] == "end_turn"
        text = reply["content"][0]["text"]
    assert text.startswith(judge_echo())
