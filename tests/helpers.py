"""Shared builders for tests: engines wired to the fake upstream, panels, a manual clock."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from fusion_engine import FusionEngine, Panel, PanelMember
from fusion_engine.settings import Settings
from fusion_engine.testing import FakeUpstream, Reply
from fusion_engine.timing import Clock, RetryPolicy
from fusion_engine.upstream import UpstreamClient

ROOT = Path(__file__).resolve().parent.parent
SERVER_SOURCES = ROOT / "src" / "fusion_engine" / "server"
E2E_FILES = ROOT / "tests" / "e2e_files"
FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.02)
#: The shared Redis on 127.0.0.1:6379, in a database of its own; tests never flush anything.
REDIS_URL = "redis://127.0.0.1:6379/15"
#: The JSON schema of the ``get_weather`` tool the tool-call tests offer (``{"city": ...}``).
CITY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
#: The variable that opts in the tests driving real agents and client libraries (`make agents-e2e`).
AGENTS_OPT_IN = "AGENTS_E2E"
#: Where `make agents-e2e` (scripts/install-agents.sh) puts the npm CLIs; PATH is the fallback.
AGENT_BIN = Path(
    os.environ.get("AGENTS_BIN_DIR", ROOT / ".agents" / "npm" / "node_modules" / ".bin")
)


def env_for(fake: FakeUpstream, **extra: str) -> dict[str, str]:
    """Environment pointing the default provider at the fake, with the repo's files."""
    return {
        "OPENROUTER_API_KEY": "test-key",
        "OPENROUTER_BASE_URL": fake.base_url,
        "FUSION_PANELS_DIR": str(ROOT / "panels"),
        "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
        **extra,
    }


def gateway_env(
    fake: FakeUpstream,
    api_keys: str,
    *,
    provider_key: str = "provider-secret-key",
    panels: Path = E2E_FILES / "panels",
    judges: Path = ROOT / "judges",
    config: Path = E2E_FILES / "gateway.yaml",
    **extra: str,
) -> dict[str, str]:
    """Environment of a gateway under test on the fake upstream.

    Clients use ``api_keys`` (comma-separated); the provider key is one tests look for in leaks.
    Panels and config default to tests/e2e_files, judges to the repo's; 0.5 s keep-alives and no
    cache unless ``extra`` (added last) says otherwise.
    """
    return {
        "OPENROUTER_API_KEY": provider_key,
        "OPENROUTER_BASE_URL": fake.base_url,
        "FUSION_SERVER_API_KEYS": api_keys,
        "FUSION_PANELS_DIR": str(panels),
        "FUSION_JUDGES_DIR": str(judges),
        "FUSION_CONFIG": str(config),
        "FUSION_KEEPALIVE_S": "0.5",
        "FUSION_CACHE": "off",
        **extra,
    }


def config_variant(
    folder: Path, source: Path, *, replace: tuple[str, str] | None = None, append: str = ""
) -> Path:
    """A copy of the gateway config ``source`` in ``folder`` (a fresh temp folder), with one
    line replaced (``(old, new)``; ``old`` must be there) and ``append`` added at the end."""
    text = source.read_text()
    if replace is not None:
        old, new = replace
        assert old in text, f"{old!r} is not in {source}"
        text = text.replace(old, new)
    config = folder / "gateway.yaml"
    config.write_text(text + append)
    return config


def fault_matrix_env(
    fake: FakeUpstream, api_keys: str, folder: Path, **extra: str
) -> dict[str, str]:
    """``gateway_env`` for a fault matrix (tests/test_faults.py, tests/test_messages_e2e.py):
    panels and config from ``folder`` (``panels/``, ``gateway.yaml``), a keep-alive every 0.3 s
    (tests wait for one while the panel works) and no panel reloads; ``extra`` added last."""
    env = gateway_env(
        fake,
        api_keys,
        panels=folder / "panels",
        config=folder / "gateway.yaml",
        FUSION_KEEPALIVE_S="0.3",
        FUSION_RELOAD_INTERVAL_S="0",
    )
    return {**env, **extra}


def script_fused_panel(
    fake: FakeUpstream,
    members: Mapping[str, Reply],
    judge: str,
    verdict: Reply,
    **replacing: Reply,
) -> None:
    """Script a fused panel: each member slug of ``members`` with its reply, and ``judge`` with
    ``verdict``. ``replacing`` swaps a member's reply, named by its slug's last part (``two=``
    for ``f/two``)."""
    for slug, reply in members.items():
        fake.script(slug, replacing.get(slug.rsplit("/", 1)[-1], reply))
    fake.script(judge, verdict)


def cancelled_among(fake: FakeUpstream, slugs: Sequence[str]) -> list[str]:
    """The abandoned calls for ``slugs`` (late cancellations of other tests' calls ignored)."""
    return sorted(slug for slug in fake.cancelled if slug in slugs)


def make_engine(
    fake: FakeUpstream,
    *,
    panels: Mapping[str, Panel] | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy = FAST_RETRY,
    env: Mapping[str, str] | None = None,
) -> FusionEngine:
    """A FusionEngine whose default provider is the fake upstream."""
    settings = Settings.from_environ(env if env is not None else env_for(fake))
    upstream = UpstreamClient(retry=retry, clock=clock)
    return FusionEngine(settings=settings, panels=panels, upstream=upstream, clock=clock)


def panel(*slugs: str | PanelMember, judge: str = "judge/model", **options: Any) -> Panel:
    """A panel of the given members (slugs or PanelMembers)."""
    members = [s if isinstance(s, PanelMember) else PanelMember(slug=s) for s in slugs]
    return Panel(name=options.pop("name", "test"), models=members, judge_model=judge, **options)


class ManualClock:
    """A clock that only moves when the test says so; sleeps wait for ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + seconds
        while self.now < wake_at:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()


async def eventually(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    # Polling: the state belongs to the fake server and the engine, which expose no events.
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class FakeInThread:
    """A FakeUpstream served from its own thread and event loop.

    End-to-end tests drive the gateway with the blocking openai client; the fake must keep
    answering meanwhile, so it cannot share the test's loop. Scripting and reading records
    from the test thread only touches plain lists and dicts.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.fake = FakeUpstream()
        self._call(self.fake.start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        self._call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(name="fake")
def reset_fake(upstream: FakeInThread) -> FakeUpstream:
    """``fake`` for modules that run a gateway process: the module's threaded fake upstream
    (conftest's ``upstream``) with its scripts and records cleared for this test.

    A module takes it with ``from .helpers import reset_fake``; it then replaces conftest's
    ``fake`` (a fresh in-loop fake) in that module.
    """
    upstream.fake.reset()
    return upstream.fake


class GatewayProcess:
    """`fusion serve` (gunicorn + uvicorn worker; ``args=["--dev"]``: uvicorn alone) in a
    subprocess, on a free port."""

    def __init__(
        self, env: Mapping[str, str], *, workers: int = 1, args: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="gateway-", suffix=".log", delete=False
        )
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            **env,
            "FUSION_HOST": "127.0.0.1",
            "FUSION_PORT": str(self.port),
            "FUSION_WORKERS": str(workers),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fusion_engine.cli", "serve", *args],
            env=full_env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except RuntimeError:
            self.stop()  # a gateway that never got ready must not outlive the test
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway did not become ready:\n{self.output()}")

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        Path(self.log.name).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int, *, timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_redis() -> None:
    """Skip the calling test when the shared Redis on 127.0.0.1:6379 does not answer."""
    if not port_answers(6379):
        pytest.skip("no Redis on 127.0.0.1:6379 (make test starts one)")


@contextmanager
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of the caller's own on a free port (the shared one is never touched):
    the process, which the caller may kill, and its URL. Skips when redis-server is missing."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: port_answers(port, timeout_s=0.2), timeout_s=10)
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(5)


def load_script(relative: str) -> ModuleType:
    """A file of scripts/ (not a package) loaded as a module named after it, e.g.
    ``load_script("scripts/k8s_configmaps.py")``."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> bool:
    """Poll ``condition`` from a blocking test; True once it holds, False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def server_routes() -> set[str]:
    """The paths of the route handlers under src/fusion_engine/server/, as their decorators
    write them (path parameters included, e.g. ``/v1/models/{model_id:path}``)."""
    decorator = re.compile(r"@(?:get|post|put|patch|delete|route)\(\s*[\"'](/[^\"']*)[\"']")
    return {m for path in SERVER_SOURCES.glob("*.py") for m in decorator.findall(path.read_text())}


def require_agents_opt_in() -> None:
    """Skip unless ``AGENTS_E2E=1``: the agent CLIs come from npm and the libraries are extras."""
    if os.environ.get(AGENTS_OPT_IN) != "1":
        pytest.skip(
            f"real agents and clients are opt-in: `make agents-e2e` runs them ({AGENTS_OPT_IN}=1, "
            "after installing Claude Code and Codex into .agents/ and the `agents` and `clients` "
            "extras)"
        )


def missing_prerequisite(message: str) -> NoReturn:
    """An opted-in test's missing agent or library: a skip, or a failure under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


#: The image `make image` builds (docker-compose.yml's tag).
IMAGE = os.environ.get("FUSION_IMAGE", "fusion-engine:local")


def docker_cli() -> str:
    """The docker CLI, when it reaches an engine: a skip otherwise, or a failure under CI."""
    docker = shutil.which("docker")
    if docker is None:
        missing_prerequisite("no docker CLI (Debian: apt-get install docker.io)")
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        missing_prerequisite("`docker info` did not answer within 30 s")
    if info.returncode != 0:
        missing_prerequisite(
            "no Docker engine reachable (DOCKER_HOST or the default socket); "
            "`make test` starts one with scripts/docker-engine.sh where dockerd can run: "
            + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        )
    return docker


def require_image(docker: str, image: str = IMAGE) -> str:
    """``image`` when the engine has it: a skip otherwise, or a failure under CI."""
    found = subprocess.run(
        [docker, "image", "inspect", image], capture_output=True, text=True, timeout=30
    )
    if found.returncode != 0:
        missing_prerequisite(f"the image {image} is missing: run make image")
    return image


def agent_cli(name: str) -> Path:
    """The agent CLI ``name`` from AGENT_BIN, else PATH (opt-in)."""
    require_agents_opt_in()
    found = shutil.which(name, path=f"{AGENT_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        missing_prerequisite(f"{name} is not installed: make agents-e2e puts it in {AGENT_BIN}")
    return Path(found)


def require_agent_library(module: str) -> None:
    """Skip unless opted in; then ``module`` missing is a skip, or a failure under CI."""
    require_agents_opt_in()
    if importlib.util.find_spec(module) is None:
        missing_prerequisite(
            f"{module} is not importable: pip install -e '.[agents,clients]' (make agents-e2e does)"
        )
