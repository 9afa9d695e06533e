"""The image `make image` builds, run by a Docker engine: what users and the manifests rely on.

Without a reachable engine, or without the image, these skip with the reason; under ``CI=true``
they fail instead (CI runs `make image` first, and `make test` provides the engine through
scripts/docker-engine.sh). Containers are published on 127.0.0.1 only and removed afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .helpers import docker_cli, free_port, require_image, wait_until

pytestmark = pytest.mark.docker

#: The non-root user of the image and of the Kubernetes manifests (runAsUser).
UID = 10001
#: Packages that only installing or testing needs: the runtime venv must not carry them.
NOT_AT_RUNTIME = ("pip", "setuptools", "wheel", "pkg_resources", "polyfactory", "faker")


@pytest.fixture(scope="module")
def docker() -> str:
    return docker_cli()


@pytest.fixture(scope="module")
def image(docker: str) -> str:
    return require_image(docker)


def run_docker(docker: str, *args: str, timeout_s: float = 60) -> str:
    ran = subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout_s)
    assert ran.returncode == 0, f"docker {' '.join(args)}: {ran.stderr}"
    return ran.stdout


@contextmanager
def container(docker: str, image: str, *options: str) -> Iterator[str]:
    """A detached container of ``image`` with ``options``; its name, removed on exit."""
    name = f"fusion-image-test-{uuid.uuid4().hex[:10]}"
    run_docker(docker, "run", "--detach", "--name", name, *options, image)
    try:
        yield name
    finally:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, timeout=60)


def inspect(docker: str, what: str) -> Any:
    return json.loads(run_docker(docker, "inspect", what))[0]


def logs(docker: str, name: str) -> str:
    ran = subprocess.run([docker, "logs", name], capture_output=True, text=True, timeout=30)
    return ran.stdout + ran.stderr


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


def test_runs_as_uid_10001_on_a_read_only_root_and_serves(docker: str, image: str) -> None:
    """With a read-only root (tmpfs /tmp, as Kubernetes mounts emptyDirs) the gateway serves
    /health, /metrics (multiprocess files under /tmp) and its OpenAPI schema (which needs no
    polyfactory), as uid 10001."""
    port = free_port()
    with container(
        docker, image,
        "--read-only", "--tmpfs", "/tmp",
        "--env", "FUSION_ALLOW_NO_AUTH=1", "--env", "FUSION_WORKERS=2",
        "--publish", f"127.0.0.1:{port}:8000",
    ) as name:  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        served = wait_until(lambda: http_status(f"{base}/health") == 200, timeout_s=60)
        assert served, f"/health never answered 200:\n{logs(docker, name)}"
        assert http_status(f"{base}/metrics") == 200
        assert http_status(f"{base}/docs/openapi.json") == 200

        state = inspect(docker, name)
        assert state["HostConfig"]["ReadonlyRootfs"] is True
        assert state["Config"]["User"] == f"{UID}:{UID}"
        # The server process itself (pid 1 is `fusion serve` exec'ing gunicorn's master).
        status = run_docker(docker, "exec", name, "cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {str(UID)}, status
        # The root filesystem refuses writes, even where the user owns the directory.
        for path in ("/app/written", "/opt/venv/written"):
            wrote = subprocess.run(
                [docker, "exec", name, "touch", path], capture_output=True, text=True, timeout=30
            )
            assert wrote.returncode != 0
            assert "Read-only file system" in wrote.stderr
        assert "Traceback" not in logs(docker, name)


def test_healthcheck_follows_fusion_port(docker: str, image: str) -> None:
    """With FUSION_PORT=7213 the image's own HEALTHCHECK command turns the container healthy.

    Only the timing is shortened at `docker run`; the command is the Dockerfile's (checked)."""
    image_check = inspect(docker, image)["Config"]["Healthcheck"]["Test"]
    with container(
        docker, image,
        "--env", "FUSION_PORT=7213", "--env", "FUSION_ALLOW_NO_AUTH=1",
        "--health-interval", "1s", "--health-timeout", "5s", "--health-retries", "3",
        "--health-start-period", "30s",
    ) as name:  # fmt: skip
        assert inspect(docker, name)["Config"]["Healthcheck"]["Test"] == image_check
        deadline = time.monotonic() + 60
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = inspect(docker, name)["State"].get("Health") or {}
            if health.get("Status") in ("healthy", "unhealthy"):
                break
            time.sleep(0.5)
        last_check = (health.get("Log") or [{}])[-1].get("Output", "").strip().splitlines()
        assert health.get("Status") == "healthy", (
            f"{health.get('Status')}, last check: {last_check[-1:]}\n{logs(docker, name)}"
        )
        # It answered on 7213, where the gateway listens, and nothing listens on 8000.
        refused = subprocess.run(
            [docker, "exec", name, "python", "-c",
             "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "Connection refused" in refused.stderr


def test_runtime_venv_carries_no_install_or_test_packages(docker: str, image: str) -> None:
    """pip, setuptools, wheel, polyfactory and Faker stay in the build stage."""
    found = run_docker(
        docker, "run", "--rm", "--entrypoint", "python", image, "-c",
        "import importlib.util, json, sys; "
        f"print(json.dumps([sys.prefix, [m for m in {NOT_AT_RUNTIME!r} if importlib.util.find_spec(m)]]))",
    )  # fmt: skip
    prefix, present = json.loads(found)
    assert prefix == "/opt/venv"
    assert present == []
    scripts = run_docker(docker, "run", "--rm", "--entrypoint", "ls", image, "/opt/venv/bin")
    assert not {"pip", "pip3", "wheel"} & set(scripts.split())
