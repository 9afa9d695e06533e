"""The README's commands work as printed (against a gateway on the fake upstream)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, FakeInThread, GatewayProcess

README = (ROOT / "README.md").read_text()
PRINTED_BASE = "http://127.0.0.1:8000"


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
