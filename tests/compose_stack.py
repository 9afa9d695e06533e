"""The project's compose stack under test: docker-compose.yml plus the CI overlays in deploy/ci/.

Used by tests/test_compose.py and tests/test_scale_out.py (marker ``docker``). They need the
image ``fusion-engine:local`` built first, so they are opt-in: ``make compose-test`` builds it
(``make image``) and runs them with ``COMPOSE_TEST=1``; plain ``make test`` skips them saying
so. Opted in, a missing engine, tool or image is a skip, or a failure under ``CI=true``.

Everything is driven through the ``docker`` and ``docker-compose`` CLIs (Debian's 1.29, v1),
each project under a name of its own, and taken down with its volumes at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import ROOT, docker_cli, missing_prerequisite, require_image

OPT_IN = "COMPOSE_TEST"
#: The gateway's image as docker-compose.yml names it (the tag `make image` builds).
IMAGE: str = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"][
    "image"
]
CI_OVERLAY = ROOT / "deploy" / "ci" / "docker-compose.ci.yml"
SCALE_OVERLAY = ROOT / "deploy" / "ci" / "docker-compose.scale.yml"
#: An env file with no variables, in place of the checkout's .env.
EMPTY_ENV_FILE = ROOT / "deploy" / "ci" / "compose.env"
#: Bearer keys the CI overlay gives the gateway, by name (one per concern).
KEYS = {
    "ci": "ci-key",
    "cache": "ci-cache-key",
    "limit": "ci-limit-key",
    "price": "ci-price-key",
    "load1": "ci-load-key-1",
    "load2": "ci-load-key-2",
    "load3": "ci-load-key-3",
    "load4": "ci-load-key-4",
}
#: Host variables docker-compose may see; nothing else of this machine fills the files' ${...}.
PASSED_THROUGH = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH")


def require_compose_stack() -> None:
    """Skip unless opted in; then a missing tool, engine or image skips (fails under CI)."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"the compose stack needs the image built first: `make compose-test` builds it "
            f"(make image) and runs these tests ({OPT_IN}=1)"
        )
    if shutil.which("docker-compose") is None:
        missing_prerequisite("no docker-compose (Debian: apt-get install docker-compose)")
    require_image(docker_cli(), IMAGE)


def run(
    command: Sequence[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a CLI command; with ``check`` a failure raises with its output."""
    ran = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    if check and ran.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {ran.returncode}:\n{ran.stdout}{ran.stderr}"
        )
    return ran


def docker_time(stamp: str) -> datetime:
    """A timestamp as Docker writes it (RFC 3339, nanoseconds, ``Z`` or an offset)."""
    stamp = stamp.replace("Z", "+00:00")
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        stamp = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    return datetime.fromisoformat(stamp).astimezone(UTC)


class ComposeStack:
    """One compose project of docker-compose.yml and ``overlays``, named ``<prefix>-<pid>``.

    ``variables`` fill the files' ``${...}`` (host ports, the fake upstream's delay); nothing
    else of this machine's environment does.
    """

    def __init__(self, prefix: str, overlays: Sequence[Path], variables: dict[str, str]) -> None:
        self.project = f"{prefix}-{os.getpid()}"
        self.files = [ROOT / "docker-compose.yml", *overlays]
        self.env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        self.env.update(variables)

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        command = [
            "docker-compose", "-p", self.project, "--project-directory", str(ROOT),
            "--env-file", str(EMPTY_ENV_FILE), *files,
        ]  # fmt: skip
        return run([*command, *args], timeout=timeout, check=check, env=self.env)

    def up(self, *args: str) -> None:
        """Start the stack (never builds: the image is ``make image``'s)."""
        self.compose("up", "-d", "--no-build", *args)

    def down(self) -> subprocess.CompletedProcess[str]:
        """Stop and remove the containers, networks and volumes of the project."""
        return self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)

    def containers(self, service: str) -> list[str]:
        """The ids of ``service``'s containers, in replica order."""
        ids = self.compose("ps", "-q", service).stdout.split()
        return sorted(ids, key=lambda cid: self.inspect(cid)["Name"])

    def container(self, service: str) -> str:
        (found,) = self.containers(service)
        return found

    def inspect(self, container: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(run(["docker", "inspect", container]).stdout)
        return found[0]

    def health(self, container: str) -> str:
        """``healthy``/``unhealthy``/``starting``, or the state of one without a healthcheck."""
        state = self.inspect(container)["State"]
        health = state.get("Health")
        return str(health["Status"]) if health else str(state["Status"])

    def wait_healthy(self, containers: Sequence[str], *, timeout_s: float = 180) -> None:
        """Wait until every container's healthcheck passes (or, without one, it runs)."""
        deadline = time.monotonic() + timeout_s
        pending = list(containers)
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if self.health(c) not in ("healthy", "running")]
            if pending:
                time.sleep(0.5)
        assert not pending, f"not healthy after {timeout_s} s: " + self.describe(pending)

    def describe(self, containers: Sequence[str]) -> str:
        parts = []
        for container in containers:
            info = self.inspect(container)
            logs = run(["docker", "logs", "--tail", "30", container], check=False)
            health = info["State"].get("Health") or {}
            parts.append(
                f"\n{info['Name']}: {info['State']['Status']} "
                f"{health.get('Status')} {health.get('Log', [])[-1:]}\n{logs.stdout}{logs.stderr}"
            )
        return "".join(parts)

    def published(self, service: str, port: int, index: int = 1) -> int:
        """The host port replica ``index`` of ``service`` publishes ``port`` on (127.0.0.1)."""
        address = self.compose("port", f"--index={index}", service, str(port)).stdout.strip()
        host, _, published = address.rpartition(":")
        assert host == "127.0.0.1", f"{service} is published on {address}, not only on 127.0.0.1"
        return int(published)

    def exec(self, service: str, *command: str, index: int = 1) -> str:
        """Run ``command`` in replica ``index`` of ``service``; its stdout."""
        return self.compose("exec", "-T", f"--index={index}", service, *command, timeout=60).stdout

    def redis_keys(self, pattern: str) -> list[str]:
        """Keys of the stack's Redis (the gateway's database 0) matching ``pattern``."""
        return self.exec("redis", "redis-cli", "--scan", "--pattern", pattern).split()

    def upstream_requests(self) -> int:
        """How many chat requests the fake upstream service has received."""
        script = (
            "import json, urllib.request; "
            "print(len(json.load(urllib.request.urlopen('http://127.0.0.1:8089/_fake/requests'))))"
        )
        return int(self.exec("upstream", "python", "-c", script))

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of the project still on the engine."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }
