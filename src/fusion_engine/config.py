"""The gateway YAML (``config/gateway.yaml``): providers, passthrough, limits, keys, prices.

The file is decoded into raw structs (unknown fields rejected), then validated and resolved
against the environment into frozen ``Provider`` objects. Only providers named here are reachable:
a request can never supply a base URL.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from .errors import ConfigError, ConfigFileError, ProviderKeyMissingError
from .settings import DEFAULT_OPENROUTER_BASE_URL, KEY_NAME, Secret, Settings
from .yamlio import convert_at, load_yaml_mapping

ProviderKind = Literal["openrouter", "openai"]


class ProviderSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One OpenAI-compatible endpoint as written in the config file."""

    kind: ProviderKind = "openai"
    base_url: str | None = None
    base_url_env: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None
    #: Calls in flight per model on this provider (e.g. one model per GPU).
    model_concurrency: dict[str, int] = msgspec.field(default_factory=dict)


class PassthroughSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where non-fusion model ids go."""

    enabled: bool = True
    provider: str | None = None


class LimitsSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Size limits on a request."""

    #: 20 MiB: a few images as base64 data URLs (a 3.3 MB photo is 4.4 MB encoded).
    max_body_bytes: int = 20 * 1024 * 1024
    max_messages: int = 512
    max_tools: int = 128
    max_members: int = 16


class RateLimitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-key rate limits (``None`` = unlimited)."""

    requests_per_minute: int | None = None
    concurrent_fusions: int | None = None
    #: When Redis cannot be reached: let requests through (true) or refuse them with 429.
    fail_open: bool = True


BudgetPeriod = Literal["day", "month", "total"]


class BudgetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A key name's spending limit: ``limit`` USD per UTC day, calendar month, or in total."""

    limit: float
    per: BudgetPeriod = "month"


class KeyRateLimitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A key name's own rate limits; a field left out keeps the gateway's ``rate_limit``."""

    requests_per_minute: int | None = None
    concurrent_fusions: int | None = None


class KeySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One caller in the ``keys:`` section: its name, where its key is, and its policy.

    The key itself never sits in the file: ``key_env`` names the environment variable that
    holds it, or ``key_sha256`` is its SHA-256 (hex), for operators who hand keys out.
    """

    name: str
    key_env: str | None = None
    key_sha256: str | None = None
    budget_usd: BudgetSpec | None = None
    rate_limit: KeyRateLimitSpec | None = None
    #: Panels this key may fuse (``None``: every panel); ad-hoc member lists need ``ad-hoc``.
    panels: list[str] | None = None
    #: Whether this key may call plain (non-fusion) model ids.
    passthrough: bool = True


class PriceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model's price in USD per million tokens, for providers that report no cost."""

    input_per_mtok: float
    output_per_mtok: float


def _default_providers() -> dict[str, ProviderSpec]:
    return {
        "openrouter": ProviderSpec(
            kind="openrouter", base_url_env="OPENROUTER_BASE_URL", api_key_env="OPENROUTER_API_KEY"
        )
    }


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole gateway config file; the defaults are what runs without a file."""

    providers: dict[str, ProviderSpec] = msgspec.field(default_factory=_default_providers)
    default_provider: str = "openrouter"
    passthrough: PassthroughSpec = PassthroughSpec()
    limits: LimitsSpec = LimitsSpec()
    rate_limit: RateLimitSpec = RateLimitSpec()
    max_cost_usd: float | None = None
    #: Over the ceiling: ``refuse`` (402), or ``trim`` the most expensive members to fit.
    cost_policy: Literal["refuse", "trim"] = "refuse"
    metrics_public: bool = True
    #: ``key``: each caller's cached answers are its own; ``shared``: one cache for all callers.
    cache_scope: Literal["key", "shared"] = "key"
    #: Named callers with budgets, limits and allow-lists (adds to FUSION_SERVER_API_KEYS).
    keys: list[KeySpec] = msgspec.field(default_factory=list)
    #: Prices of models whose provider reports no cost (a local server), by slug: calls to
    #: them are charged to key budgets at these prices, marked estimated.
    prices: dict[str, PriceSpec] = msgspec.field(default_factory=dict)


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """A provider resolved against the environment, ready to call."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key: Secret | None
    api_key_env: str | None
    max_concurrency: int | None = None
    model_concurrency: dict[str, int] = msgspec.field(default_factory=dict)

    def require_key(self) -> Secret | None:
        """The key to send, or ``None`` for a provider that takes none.

        Raises:
            ProviderKeyMissingError: the provider names a key variable that is not set.
        """
        if self.api_key_env and self.api_key is None:
            raise ProviderKeyMissingError(self.name, self.api_key_env)
        return self.api_key


class ConfiguredKey(msgspec.Struct, frozen=True, kw_only=True):
    """A ``keys:`` entry resolved: the SHA-256 of its key and its policy."""

    digest: bytes
    spec: KeySpec


class ResolvedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway config plus its providers and keys resolved against the environment."""

    gateway: GatewayConfig
    providers: dict[str, Provider]
    keys: tuple[ConfiguredKey, ...] = ()

    @property
    def default_provider(self) -> Provider:
        """The provider members use when their panel names none."""
        return self.providers[self.gateway.default_provider]


def load_config(settings: Settings, *, need_keys: bool = True) -> ResolvedConfig:
    """Read the gateway YAML named by the settings (built-in defaults when the default path is
    absent) and resolve its providers. ``need_keys=False`` (``fusion spend``, which reads only
    key names) accepts ``keys:`` entries whose variable is unset.

    Raises:
        ConfigError: the file is unreadable or invalid; the message names the file and field.
    """
    path = settings.config_path
    explicitly_named = "FUSION_CONFIG" in settings.environ
    if not path.exists():
        if explicitly_named:
            raise ConfigError(f"{path}: FUSION_CONFIG names a file that does not exist")
        return resolve_config(GatewayConfig(), settings.environ, source="<built-in defaults>")
    document = load_yaml_mapping(path, path.read_bytes())
    # Providers are converted one by one so an error names the provider (msgspec reports a
    # dict key only as "[...]").
    raw_providers = document.pop("providers", None)
    gateway = convert_at(document, GatewayConfig, path)
    if raw_providers is not None:
        if not isinstance(raw_providers, dict):
            raise ConfigFileError(str(path), "providers", "must be a mapping of name to provider")
        providers = {
            str(name): convert_at(spec, ProviderSpec, path, prefix=f"providers.{name}")
            for name, spec in raw_providers.items()
        }
        gateway = msgspec.structs.replace(gateway, providers=providers)
    return resolve_config(gateway, settings.environ, source=str(path), need_keys=need_keys)


def resolve_config(
    gateway: GatewayConfig,
    environ: Mapping[str, str],
    *,
    source: str = "<config>",
    need_keys: bool = True,
) -> ResolvedConfig:
    """Validate cross-references in ``gateway`` and resolve each provider's URL and key.

    Raises:
        ConfigFileError: a reference or value is invalid (named by ``source`` and field).
    """
    providers = {
        name: _resolve_provider(name, spec, environ, source)
        for name, spec in gateway.providers.items()
    }
    if gateway.default_provider not in providers:
        raise ConfigFileError(
            source, "default_provider", f"unknown provider {gateway.default_provider!r}"
        )
    passthrough = gateway.passthrough.provider
    if passthrough is not None and passthrough not in providers:
        raise ConfigFileError(source, "passthrough.provider", f"unknown provider {passthrough!r}")
    for field in ("max_body_bytes", "max_messages", "max_tools", "max_members"):
        if getattr(gateway.limits, field) < 1:
            raise ConfigFileError(source, f"limits.{field}", "must be at least 1")
    for model, price in gateway.prices.items():
        # ``not >= 0`` so a NaN (which compares false with everything) is refused too.
        if not (0 <= price.input_per_mtok < math.inf and 0 <= price.output_per_mtok < math.inf):
            raise ConfigFileError(source, f"prices.{model}", "prices must be 0 or more")
    keys = tuple(
        _resolve_key(index, spec, environ, source, need_keys)
        for index, spec in enumerate(gateway.keys)
    )
    _check_shared_names(keys, source)
    return ResolvedConfig(gateway=gateway, providers=providers, keys=keys)


def _resolve_key(
    index: int, spec: KeySpec, environ: Mapping[str, str], source: str, need_keys: bool
) -> ConfiguredKey:
    """One ``keys:`` entry checked, with the SHA-256 of its key (the key is never kept)."""
    where = f"keys[{index}]"
    if not KEY_NAME.fullmatch(spec.name):
        raise ConfigFileError(
            source, f"{where}.name", "must be 1-32 characters from a-z, 0-9, _ and -"
        )
    where = f"keys[{index}] ({spec.name})"
    if (spec.key_env is None) == (spec.key_sha256 is None):
        raise ConfigFileError(source, where, "give exactly one of key_env and key_sha256")
    if spec.key_env is not None:
        key = (environ.get(spec.key_env) or "").strip()
        if not key and not need_keys:
            return ConfiguredKey(digest=b"", spec=spec)  # matches no key: it is never served
        if not key:
            raise ConfigFileError(
                source, f"{where}.key_env", f"the variable {spec.key_env} is not set"
            )
        digest = hashlib.sha256(key.encode()).digest()
    else:
        assert spec.key_sha256 is not None
        try:
            digest = bytes.fromhex(spec.key_sha256)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigFileError(
                source, f"{where}.key_sha256", "must be 64 hex digits (a SHA-256)"
            )
    # ``not 0 < limit < inf``: a NaN limit passed ``<= 0`` and then let every request through.
    if spec.budget_usd is not None and not 0 < spec.budget_usd.limit < math.inf:
        raise ConfigFileError(source, f"{where}.budget_usd.limit", "must be greater than 0")
    if spec.rate_limit is not None:
        for field in ("requests_per_minute", "concurrent_fusions"):
            value = getattr(spec.rate_limit, field)
            if value is not None and value < 1:
                raise ConfigFileError(source, f"{where}.rate_limit.{field}", "must be at least 1")
    return ConfiguredKey(digest=digest, spec=spec)


def _check_shared_names(keys: tuple[ConfiguredKey, ...], source: str) -> None:
    """Entries may share a name (rotation: the old and the new key) only with one policy."""
    first: dict[str, tuple[int, KeySpec]] = {}
    for index, key in enumerate(keys):
        policy = msgspec.structs.replace(key.spec, key_env=None, key_sha256=None)
        seen = first.setdefault(key.spec.name, (index, policy))
        if seen[1] != policy:
            raise ConfigFileError(
                source,
                f"keys[{index}] ({key.spec.name})",
                f"shares its name with keys[{seen[0]}] but not its budget, limits or panels "
                "(entries of one name are one caller)",
            )


def _resolve_provider(
    name: str, spec: ProviderSpec, environ: Mapping[str, str], source: str
) -> Provider:
    where = f"providers.{name}"
    base_url = spec.base_url
    if spec.base_url_env:
        base_url = environ.get(spec.base_url_env) or base_url
    if not base_url and spec.kind == "openrouter":
        base_url = DEFAULT_OPENROUTER_BASE_URL
    if not base_url:
        raise ConfigFileError(source, f"{where}.base_url", "no base_url, and base_url_env is unset")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigFileError(source, f"{where}.base_url", f"not an http(s) URL: {base_url!r}")
    if spec.max_concurrency is not None and spec.max_concurrency < 1:
        raise ConfigFileError(source, f"{where}.max_concurrency", "must be at least 1")
    for model, limit in spec.model_concurrency.items():
        if limit < 1:
            raise ConfigFileError(
                source, f"{where}.model_concurrency.{model}", "must be at least 1"
            )
    key = environ.get(spec.api_key_env) if spec.api_key_env else None
    return Provider(
        name=name,
        kind=spec.kind,
        base_url=base_url.rstrip("/"),
        api_key=Secret(key) if key else None,
        api_key_env=spec.api_key_env,
        max_concurrency=spec.max_concurrency,
        model_concurrency=dict(spec.model_concurrency),
    )
