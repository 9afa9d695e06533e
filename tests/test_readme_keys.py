"""README "Teams, keys and budgets": its YAML and commands work as printed (on the fake upstream
and the shared Redis)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .helpers import (
    E2E_FILES,
    REDIS_URL,
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    require_redis,
)

README = (ROOT / "README.md").read_text()
HEADING = "## Teams, keys and budgets"
PRINTED_BASE = "http://127.0.0.1:8000"


def block(language: str) -> str:
    section = README[README.index(HEADING) :]
    section = section[: section.index("\n## ", 1)]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block in {HEADING!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def printed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, str, Path]]:
    """A gateway run as the section says: its keys: block in the gateway config, the printed
    export in the environment, on Redis (where `fusion spend` reads)."""
    require_redis()
    script = block("sh")
    export = re.search(r"^export TEAM_A_KEY=(\S+)$", script, re.MULTILINE)
    assert export, script
    assert ".venv/bin/fusion serve" in script
    folder = tmp_path_factory.mktemp("readme-keys")
    config = folder / "gateway.yaml"
    config.write_text((E2E_FILES / "gateway.yaml").read_text() + "\n" + block("yaml"))
    upstream = FakeInThread()
    env = gateway_env(
        upstream.fake, "", config=config, panels=ROOT / "panels",
        TEAM_A_KEY=export.group(1), REDIS_URL=REDIS_URL,
    )  # fmt: skip
    process = GatewayProcess(env)
    yield process, export.group(1), config
    process.stop()
    upstream.close()


def test_the_printed_keys_section_is_valid_and_complete() -> None:
    """The YAML shows every field of a key entry, and the shipped config documents the
    section (commented out)."""
    entry = yaml.safe_load(block("yaml"))["keys"][0]
    assert set(entry) == {"name", "key_env", "budget_usd", "rate_limit", "panels", "passthrough"}
    shipped = (ROOT / "config" / "gateway.yaml").read_text()
    assert "keys: []" in shipped and "key_sha256" in shipped and "prices: {}" in shipped


def test_the_spend_curl_prints_the_callers_budget(
    printed: tuple[GatewayProcess, str, Path],
) -> None:
    gateway, key, _ = printed
    curl = next(line for line in block("sh").splitlines() if line.startswith("curl "))
    ran = subprocess.run(
        ["bash", "-c", curl.replace(PRINTED_BASE, gateway.base_url) + " --fail-with-body"],
        env={**os.environ, "TEAM_A_KEY": key}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["key"] == "team-a"
    assert report["budget"]["limit_usd"] == 50 and report["budget"]["per"] == "month"


def test_the_key_may_fuse_its_panels_only(printed: tuple[GatewayProcess, str, Path]) -> None:
    """What the comments promise: budget and code fuse and are charged, other panels and
    plain model ids are 403."""
    gateway, key, _ = printed
    headers = {"Authorization": f"Bearer {key}"}
    before = httpx.get(f"{gateway.base_url}/v1/spend", headers=headers, timeout=10).json()

    def ask(model: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        return httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
        )

    assert ask("fusion/budget").status_code == 200
    assert ask("fusion/quality").status_code == 403
    assert ask("vendor/plain").status_code == 403
    after = httpx.get(f"{gateway.base_url}/v1/spend", headers=headers, timeout=10).json()
    assert after["total_usd"] > before["total_usd"]


def test_fusion_spend_lists_the_key(printed: tuple[GatewayProcess, str, Path]) -> None:
    """`fusion spend` and `fusion spend team-a`, as the section names them."""
    _, _, config = printed
    assert "`fusion spend team-a`" in README
    for args in (["spend"], ["spend", "team-a"]):
        ran = subprocess.run(
            [sys.executable, "-m", "fusion_engine.cli", *args],
            env={"PATH": os.environ["PATH"], "FUSION_CONFIG": str(config), "REDIS_URL": REDIS_URL},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "team-a" in ran.stdout and "50.00 / month" in ran.stdout, shlex.join(args)
