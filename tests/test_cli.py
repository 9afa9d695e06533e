"""The `fusion` command, run as a real subprocess against the fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fusion_engine.testing import FakeUpstream, Reply

from .helpers import ROOT, env_for


class Ran:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr


async def fusion(*args: str, env: dict[str, str]) -> Ran:
    """Run `python -m fusion_engine.cli ARGS` with only ``env`` (plus PATH) as environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fusion_engine.cli", *args,
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


def script_budget_panel(fake: FakeUpstream) -> None:
    """The budget panel's three members and judge answer, each with a cost."""
    fake.script("qwen/qwen3.7-plus", Reply(text="Four.", cost=0.01))
    for slug in ("xiaomi/mimo-v2.5", "deepseek/deepseek-v4-flash", "xiaomi/mimo-v2.5-pro"):
        fake.script(slug, Reply(text=f"{slug} says 4", cost=0.001))


async def test_run_verbose_prints_answer_members_and_totals(fake: FakeUpstream) -> None:
    """`fusion run -p budget -v`: the fused answer alone on stdout; each member, the cost table
    and the progress on stderr."""
    script_budget_panel(fake)
    ran = await fusion("run", "What is 2+2?", "-p", "budget", "-v", env=env_for(fake))
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "Four.\n"
    assert "deepseek/deepseek-v4-flash says 4" in ran.stderr
    assert "member 3" in ran.stderr and "judge" in ran.stderr
    assert "$0.013000" in ran.stderr  # total of three members and the judge
    assert "[3/3]" in ran.stderr  # progress went to stderr
    assert "judging with qwen/qwen3.7-plus" in ran.stderr


async def test_verbose_run_redirected_to_a_file_writes_only_the_answer(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """The README's `fusion run ... -v > answer.txt`, through a shell and the installed
    `fusion` script: the file holds the answer, the terminal (stderr) everything else."""
    script_budget_panel(fake)
    fusion_script = Path(sys.executable).parent / "fusion"
    command = f"{fusion_script} run 'Why is the sky blue?' -p budget -v > answer.txt"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command,
        env={"PATH": os.environ.get("PATH", ""), **env_for(fake)},
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert (tmp_path / "answer.txt").read_text() == "Four.\n"
    assert "xiaomi/mimo-v2.5-pro says 4" in stderr.decode()
    assert "$0.013000" in stderr.decode()


async def test_run_plain_prints_only_the_answer(fake: FakeUpstream) -> None:
    """Without -v, stdout holds just the fused answer."""
    fake.script("qwen/qwen3.7-plus", Reply(text="Just this."))
    ran = await fusion("run", "q", "-p", "budget", env=env_for(fake))
    assert ran.code == 0
    assert ran.stdout.strip() == "Just this."


async def test_run_json_is_the_whole_result(fake: FakeUpstream) -> None:
    """--json prints a FusionResult that parses, with members and judge."""
    ran = await fusion("run", "q", "-p", "self_fuse", "--json", env=env_for(fake))
    assert ran.code == 0
    result = json.loads(ran.stdout)
    assert result["panel"] == "self_fuse"
    assert len(result["panel_responses"]) == 2
    assert result["judge_response"]["model"] == "deepseek/deepseek-v4-pro"


async def test_ad_hoc_models_with_judge_override(fake: FakeUpstream) -> None:
    """-m and --judge-model build an ad-hoc panel; web search reaches members."""
    ran = await fusion(
        "run", "q", "-m", "a/one,b/two", "--judge-model", "j/judge", "--web-search",
        env=env_for(fake),
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert fake.requests_for("a/one")[0].body["plugins"] == [{"id": "web"}]
    assert len(fake.requests_for("j/judge")) == 1


async def test_missing_key_is_one_line_without_traceback(fake: FakeUpstream) -> None:
    """No OPENROUTER_API_KEY: one clear line naming the variable, exit 1, nothing sent."""
    env = env_for(fake)
    del env["OPENROUTER_API_KEY"]
    ran = await fusion("run", "q", "-p", "budget", env=env)
    assert ran.code == 1
    assert ran.stderr.strip().count("\n") == 0
    assert "OPENROUTER_API_KEY" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert fake.received == []


async def test_unknown_panel_is_one_line(fake: FakeUpstream) -> None:
    """An unknown panel name is reported in one line."""
    ran = await fusion("run", "q", "-p", "nope", env=env_for(fake))
    assert ran.code == 1
    assert ran.stderr.strip() == "fusion: error: unknown panel 'nope'"


async def test_broken_panel_file_names_file_and_field(fake: FakeUpstream, tmp_path: Path) -> None:
    """A broken panel file stops the command with its path and field, not a traceback."""
    (tmp_path / "bad.yaml").write_text("name: bad\nmodels: []\njudge_model: j\n")
    env = env_for(fake, FUSION_PANELS_DIR=str(tmp_path))
    ran = await fusion("run", "q", "-p", "bad", env=env)
    assert ran.code == 1
    assert f"{tmp_path / 'bad.yaml'}: models: a panel needs at least one model" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_every_member_failing_exits_non_zero(fake: FakeUpstream) -> None:
    """When no member answers, the command fails with the reasons."""
    for slug in ("deepseek/deepseek-v4-pro",):
        fake.script(slug, Reply(status=402, error_message="Insufficient credits"))
    ran = await fusion("run", "q", "-p", "self_fuse", "-v", env=env_for(fake))
    assert ran.code == 1
    assert "every panel member failed" in ran.stderr
    assert "Insufficient credits" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_panels_lists_members_judge_and_cost(fake: FakeUpstream) -> None:
    """`fusion panels` shows every panel with members, judge, template and estimated cost."""
    ran = await fusion("panels", env=env_for(fake))
    assert ran.code == 0
    for text in ("budget", "quality", "code", "self_fuse", "qwen/qwen3.7-plus", "deep_research"):
        assert text in ran.stdout
    assert "$0.50–1.00 / query" in ran.stdout
    listed = json.loads((await fusion("panels", "--json", env=env_for(fake))).stdout)
    assert [p["name"] for p in listed] == ["budget", "code", "quality", "self_fuse"]


async def test_usage_error_without_panel(fake: FakeUpstream) -> None:
    """`fusion run` without -p or -m explains what is missing and exits 2."""
    ran = await fusion("run", "q", env=env_for(fake))
    assert ran.code == 2
    assert "-p NAME" in ran.stderr
