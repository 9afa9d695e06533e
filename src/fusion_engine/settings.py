"""Every environment variable Fusion Engine reads, read once into one typed struct.

The environment is passed in (``Settings.from_environ(os.environ)``) so nothing here reads global
state at import time and tests build settings from plain dicts.
"""

from __future__ import annotations

import hmac
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from .errors import ConfigError

CacheBackend = Literal["redis", "memory", "off"]
LogFormat = Literal["json", "console"]
#: The levels gunicorn and uvicorn both know (anything else would be silently read as info).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
#: A key name: the label in rate limits, metrics, logs and spend (never the key itself).
KEY_NAME = re.compile(r"[a-z0-9_-]{1,32}")


class Secret:
    """A secret string whose ``repr`` and ``str`` never show the value (keys stay out of logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


class ApiKey(msgspec.Struct, frozen=True):
    """A bearer key the server accepts, and the name callers using it are known by."""

    name: str
    secret: Secret


def parse_api_keys(raw: str, variable: str = "FUSION_SERVER_API_KEYS") -> tuple[ApiKey, ...]:
    """The comma-separated entries of ``raw``, each ``key`` or ``name:key``.

    Unnamed keys are named ``key1``, ``key2``... in the order they appear; a key containing
    ``:`` must be given a name (only the first ``:`` separates). Two keys may share a name
    (rotation): they share its limits.

    Raises:
        ConfigError: a name is not ``[a-z0-9_-]{1,32}`` (the message never shows the key).
    """
    keys: list[ApiKey] = []
    unnamed = 0
    for position, entry in enumerate(raw.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        name, colon, key = entry.partition(":")
        if not colon:
            unnamed += 1
            name, key = f"key{unnamed}", entry
        name, key = name.strip(), key.strip()
        if not KEY_NAME.fullmatch(name):
            raise ConfigError(
                f"{variable}: entry {position} has an invalid key name (use name:key with "
                "a name of 1-32 characters from a-z, 0-9, _ and -)"
            )
        if not key:
            raise ConfigError(f"{variable}: entry {position} ({name}) has an empty key")
        keys.append(ApiKey(name=name, secret=Secret(key)))
    return tuple(keys)


class Environ(dict[str, str]):
    """A snapshot of the process environment whose ``repr`` lists no values."""

    def __repr__(self) -> str:
        return f"Environ(<{len(self)} variables>)"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide settings, one field per environment variable of the design."""

    #: Environment the settings were read from; provider keys named in the gateway config
    #: (``api_key_env``) are looked up here, so the process environment is read once.
    environ: Environ = msgspec.field(default_factory=Environ)
    #: Bearer keys accepted by the server, with their names (``FUSION_SERVER_API_KEYS`` /
    #: ``FUSION_SERVER_API_KEY``, entries ``key`` or ``name:key``).
    server_api_keys: tuple[ApiKey, ...] = ()
    #: ``FUSION_ALLOW_NO_AUTH=1`` lets an unauthenticated server bind a non-loopback address.
    allow_no_auth: bool = False
    redis_url: str | None = None
    cache_backend: CacheBackend = "memory"
    cache_ttl_s: int = 86400
    cache_max_mb: int = 64
    #: ``FUSION_RESPONSES_TTL_S``: how long a stored Responses API response lives (30 days).
    responses_ttl_s: int = 2592000
    panels_dir: Path = Path("panels")
    judges_dir: Path = Path("judges")
    config_path: Path = Path("config/gateway.yaml")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    log_format: LogFormat = "json"
    prometheus_multiproc_dir: str | None = None
    #: ``FUSION_KEEPALIVE_S``: how long a fused stream holds its status line, and the interval
    #: of keep-alive comments after that.
    keepalive_s: float = 5.0
    #: ``FUSION_RELOAD_INTERVAL_S``: how often panels and judge templates are checked for
    #: edits; ``0`` turns the watch off.
    reload_interval_s: float = 3.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read every Fusion Engine variable from ``environ``.

        Raises:
            ConfigError: a variable holds a value of the wrong kind.
        """
        env = Environ(environ)
        if keys_raw := env.get("FUSION_SERVER_API_KEYS") or "":
            api_keys = parse_api_keys(keys_raw, "FUSION_SERVER_API_KEYS")
        else:
            api_keys = parse_api_keys(
                env.get("FUSION_SERVER_API_KEY") or "", "FUSION_SERVER_API_KEY"
            )
        redis_url = _redis_url(env)
        cache = _choice(env, "FUSION_CACHE", "redis" if redis_url else "memory", CACHE_BACKENDS)
        log_format = _choice(
            env, "FUSION_LOG_FORMAT", "console" if sys.stderr.isatty() else "json", LOG_FORMATS
        )
        return cls(
            environ=env,
            server_api_keys=api_keys,
            allow_no_auth=_flag(env, "FUSION_ALLOW_NO_AUTH"),
            redis_url=redis_url,
            cache_backend=cache,  # type: ignore[arg-type]  # checked just above
            cache_ttl_s=_int(env, "FUSION_CACHE_TTL_S", 86400, minimum=1),
            cache_max_mb=_int(env, "FUSION_CACHE_MAX_MB", 64, minimum=1),
            responses_ttl_s=_int(env, "FUSION_RESPONSES_TTL_S", 2592000, minimum=1),
            panels_dir=Path(env.get("FUSION_PANELS_DIR") or "panels"),
            judges_dir=Path(env.get("FUSION_JUDGES_DIR") or "judges"),
            config_path=Path(env.get("FUSION_CONFIG") or "config/gateway.yaml"),
            host=env.get("FUSION_HOST") or "127.0.0.1",
            port=_int(env, "FUSION_PORT", 8000, minimum=1, maximum=65535),
            workers=_int(env, "FUSION_WORKERS", 1, minimum=1),
            log_level=_choice(env, "FUSION_LOG_LEVEL", "info", LOG_LEVELS),
            log_format=log_format,  # type: ignore[arg-type]  # checked just above
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            keepalive_s=_positive_float(env, "FUSION_KEEPALIVE_S", 5.0),
            reload_interval_s=_float(env, "FUSION_RELOAD_INTERVAL_S", 3.0),
        )


CACHE_BACKENDS = ("redis", "memory", "off")
LOG_FORMATS = ("json", "console")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive), or ``default`` when unset."""
    raw = env.get(name) or default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def _redis_url(env: Mapping[str, str]) -> str | None:
    """``REDIS_URL`` if set, with a scheme redis-py understands (checked here, at start, rather
    than in a worker's lifespan, where it would only say the worker failed to boot). The value
    is never echoed: it may hold a password."""
    url = (env.get("REDIS_URL") or "").strip()
    if not url:
        return None
    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            "REDIS_URL must start with " + ", ".join(REDIS_SCHEMES)
            + " (for example redis://127.0.0.1:6379/0)"
        )  # fmt: skip
    return url


def _flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no switch; a word that is neither is an error rather than a silent "no"."""
    raw = env.get(name, "")
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be 1/true/yes or 0/false/no, not {raw!r}")


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer within ``[minimum, maximum]``, or ``default`` when unset."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from exc
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{name} must be {bounds}, not {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    """A finite number not below 0, or ``default`` when unset."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number not below 0, not {raw!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    """A finite number above 0, or ``default`` when unset."""
    value = _float(env, name, default)
    if value == 0:
        raise ConfigError(f"{name} must be greater than 0, not {env.get(name)!r}")
    return value
