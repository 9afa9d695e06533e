"""Settings from the environment, and the gateway config file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fusion_engine.config import load_config
from fusion_engine.errors import ConfigError, ConfigFileError, ProviderKeyMissingError
from fusion_engine.settings import DEFAULT_OPENROUTER_BASE_URL, Settings

from .helpers import ROOT, free_port


def test_defaults_without_environment() -> None:
    """With nothing set, the design's defaults apply."""
    settings = Settings.from_environ({})
    assert settings.cache_backend == "memory"
    assert settings.cache_ttl_s == 86400
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.panels_dir == Path("panels")
    assert settings.server_api_keys == ()


def test_redis_url_selects_redis_cache_and_keys_split() -> None:
    """REDIS_URL makes redis the default cache; server keys are comma-separated."""
    settings = Settings.from_environ(
        {"REDIS_URL": "redis://127.0.0.1:6379/0", "FUSION_SERVER_API_KEYS": "k1, k2,"}
    )
    assert settings.cache_backend == "redis"
    assert [key.secret.reveal() for key in settings.server_api_keys] == ["k1", "k2"]


def test_secrets_never_show_in_repr() -> None:
    """Neither the server keys nor the provider key appear in the settings' repr."""
    settings = Settings.from_environ(
        {"FUSION_SERVER_API_KEY": "server-secret", "OPENROUTER_API_KEY": "sk-or-secret"}
    )
    text = repr(settings)
    assert "server-secret" not in text and "sk-or-secret" not in text
    provider = load_config(settings).providers["openrouter"]
    assert "sk-or-secret" not in repr(provider)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FUSION_CACHE": "disk"}, "FUSION_CACHE"),
        ({"FUSION_PORT": "eighty"}, "FUSION_PORT"),
        ({"FUSION_LOG_FORMAT": "xml"}, "FUSION_LOG_FORMAT"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    """A variable with a wrong value is named in the error."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_environ(env)


def test_shipped_config_resolves_providers() -> None:
    """config/gateway.yaml: openrouter from the environment, local on 127.0.0.1:8080."""
    settings = Settings.from_environ(
        {"FUSION_CONFIG": str(ROOT / "config/gateway.yaml"), "OPENROUTER_API_KEY": "k"}
    )
    config = load_config(settings)
    openrouter = config.providers["openrouter"]
    assert openrouter.base_url == DEFAULT_OPENROUTER_BASE_URL
    assert openrouter.require_key() is not None
    local = config.providers["local"]
    assert (local.kind, local.base_url, local.max_concurrency) == (
        "openai",
        "http://127.0.0.1:8080/v1",
        1,
    )
    assert local.require_key() is None
    assert config.gateway.limits.max_members == 16


def test_missing_key_is_reported_only_when_needed() -> None:
    """A provider without its key loads, and fails with the variable's name when used."""
    config = load_config(
        Settings.from_environ({"FUSION_CONFIG": str(ROOT / "config/gateway.yaml")})
    )
    with pytest.raises(ProviderKeyMissingError, match="OPENROUTER_API_KEY"):
        config.providers["openrouter"].require_key()


def test_base_url_env_overrides(tmp_path: Path) -> None:
    """OPENROUTER_BASE_URL points the default provider elsewhere (trailing slash dropped)."""
    settings = Settings.from_environ(
        {
            "FUSION_CONFIG": str(ROOT / "config/gateway.yaml"),
            "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1/",
        }
    )
    assert load_config(settings).default_provider.base_url == "http://127.0.0.1:9/v1"


def test_missing_default_config_uses_builtin_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without FUSION_CONFIG and without ./config/gateway.yaml, OpenRouter alone is configured."""
    monkeypatch.chdir(tmp_path)
    config = load_config(Settings.from_environ({}))
    assert list(config.providers) == ["openrouter"]


def test_named_config_must_exist(tmp_path: Path) -> None:
    """FUSION_CONFIG naming a missing file is an error, not a silent default."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Settings.from_environ({"FUSION_CONFIG": str(tmp_path / "nope.yaml")}))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("default_provider: mars\n", "default_provider"),
        ("providers: {x: {kind: openai}}\ndefault_provider: x\n", "providers.x.base_url"),
        (
            "providers: {x: {kind: openai, base_url: 'ftp://a'}}\ndefault_provider: x\n",
            "providers.x.base_url",
        ),
        ("providers: {x: {kind: nope, base_url: 'http://a'}}\n", "providers.x.kind"),
        ("passthrough: {provider: mars}\n", "passthrough.provider"),
        ("limits: {max_members: 0}\n", "limits.max_members"),
        ("surprise: 1\n", "surprise"),
    ],
)
def test_broken_config_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    """Each config mistake is reported with the file and the field."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        load_config(Settings.from_environ({"FUSION_CONFIG": str(path)}))
    assert raised.value.field == field
    assert str(path) in raised.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FUSION_WORKERS", "-1"),
        ("FUSION_WORKERS", "0"),
        ("FUSION_PORT", "70000"),
        ("FUSION_PORT", "0"),
        ("FUSION_PORT", "-80"),
        ("FUSION_CACHE_TTL_S", "-5"),
        ("FUSION_CACHE_TTL_S", "0"),
        ("FUSION_CACHE_MAX_MB", "-1"),
        ("FUSION_CACHE_MAX_MB", "0"),
        ("FUSION_RESPONSES_TTL_S", "0"),
        ("FUSION_RESPONSES_TTL_S", "soon"),
        ("FUSION_LOG_LEVEL", "loud"),
        ("FUSION_LOG_FORMAT", "xml"),
        ("FUSION_CACHE", "disk"),
        ("FUSION_KEEPALIVE_S", "0"),
        ("FUSION_KEEPALIVE_S", "nan"),
        ("FUSION_KEEPALIVE_S", "inf"),
        ("FUSION_RELOAD_INTERVAL_S", "-1"),
        ("FUSION_RELOAD_INTERVAL_S", "nan"),
        ("FUSION_ALLOW_NO_AUTH", "maybe"),
    ],
)
def test_out_of_range_values_are_refused_by_name(name: str, value: str) -> None:
    """Every variable is checked for its range or its choices, and the error names it."""
    with pytest.raises(ConfigError, match=name) as raised:
        Settings.from_environ({name: value})
    assert repr(value) in raised.value.message


@pytest.mark.parametrize("url", ["localhost:6379", "http://cache.internal:6379", "cache.internal"])
def test_a_redis_url_without_its_scheme_is_refused_at_start(url: str) -> None:
    """Found in review: REDIS_URL=localhost:6379 passed the start checks and every worker then
    died in its lifespan ("Worker failed to boot"), never naming the variable. The message
    names it but not the value (a URL may carry a password)."""
    with pytest.raises(ConfigError, match="REDIS_URL must start with redis://") as raised:
        Settings.from_environ({"REDIS_URL": url})
    assert url not in raised.value.message
    assert Settings.from_environ({"REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}).redis_url


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("FUSION_LOG_LEVEL", "WARNING", "log_level", "warning"),
        ("FUSION_LOG_LEVEL", "debug", "log_level", "debug"),
        ("FUSION_PORT", "65535", "port", 65535),
        ("FUSION_ALLOW_NO_AUTH", "0", "allow_no_auth", False),
        ("FUSION_ALLOW_NO_AUTH", "true", "allow_no_auth", True),
        ("FUSION_RELOAD_INTERVAL_S", "0", "reload_interval_s", 0.0),
    ],
)
def test_values_at_the_edges_are_accepted(name: str, value: str, field: str, expected: Any) -> None:
    """The checks refuse only what cannot work: edges and spellings in range are kept."""
    assert getattr(Settings.from_environ({name: value}), field) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("FUSION_WORKERS", "-1"), ("FUSION_PORT", "70000"), ("FUSION_LOG_LEVEL", "loud")],
)
def test_serve_refuses_a_bad_variable_without_a_traceback(name: str, value: str) -> None:
    """`fusion serve` exits non-zero at start with one line naming the variable."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FUSION_PANELS_DIR": str(ROOT / "panels"),
        "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
        "FUSION_PORT": str(free_port()),
        name: value,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fusion_engine.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()  # gunicorn's master stops its workers on SIGTERM
        process.communicate(timeout=30)
        pytest.fail(f"fusion serve started with {name}={value}")
    assert process.returncode != 0
    assert name in stderr and "Traceback" not in stderr, stderr


def test_make_run_takes_host_and_port_from_the_environment() -> None:
    """`make run` leaves FUSION_HOST / FUSION_PORT to the environment (no --host/--port)."""
    recipe = subprocess.run(
        ["make", "-s", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    serve_line = next(line for line in recipe.splitlines() if "fusion serve" in line)
    assert "--port" not in serve_line and "--host" not in serve_line, serve_line
