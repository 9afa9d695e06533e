"""Who may call, and under what policy: the key ring built from ``FUSION_SERVER_API_KEYS`` and
the gateway YAML's ``keys:`` section.

Every key is kept only as its SHA-256, so keys written as ``key_sha256`` and keys read from the
environment are checked the same way: the presented key is hashed once and compared with every
digest in constant time. A key *name* is the caller: its budget, rate limits, allow-list, cache
scope and the label in logs and metrics. Entries may share a name (rotation); a name from the
environment that the YAML also lists takes the YAML's policy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from .config import BudgetSpec, ConfiguredKey, RateLimitSpec
from .errors import ConfigError, NotFoundError, PermissionDeniedError
from .settings import ApiKey

#: The caller's name when the server has no keys (loopback only, or FUSION_ALLOW_NO_AUTH=1).
ANONYMOUS = "anonymous"
#: The allow-list entry that lets a key send its own member list (``fusion.models``).
AD_HOC_PANEL = "ad-hoc"


class KeyPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What one key name may do; the default policy has no budget and no allow-list."""

    name: str
    budget: BudgetSpec | None = None
    #: The rate limits in force for this name (the gateway's, with the key's overrides).
    rate_limit: RateLimitSpec = RateLimitSpec()
    panels: frozenset[str] | None = None
    passthrough: bool = True

    def check_panel(self, panel: str | None) -> None:
        """Refuse a fusion of ``panel`` (``None``: an ad-hoc member list) this key may not run.

        Raises:
            PermissionDeniedError: the panel is not on the key's allow-list (403).
        """
        if self.panels is None:
            return
        if panel is None:
            if AD_HOC_PANEL in self.panels:
                return
            raise PermissionDeniedError(
                f"the key {self.name!r} may not send its own member list or judge model "
                "(fusion.models, fusion.judge_model); ask the operator to add 'ad-hoc' to its "
                "panels",
                param="fusion.models",
            )
        if panel not in self.panels:
            allowed = ", ".join(sorted(self.panels - {AD_HOC_PANEL})) or "none"
            raise PermissionDeniedError(
                f"the key {self.name!r} may not use the panel {panel!r} (allowed: {allowed})",
                param="model",
            )

    def check_passthrough(self, model: str) -> None:
        """Refuse a plain model id when this key may only fuse.

        Raises:
            PermissionDeniedError: passthrough is off for this key (403).
        """
        if not self.passthrough:
            raise PermissionDeniedError(
                f"the key {self.name!r} may only use fusion/<panel> models, not {model!r}",
                param="model",
            )


class KeyRing:
    """The accepted keys (as digests) and the policy of each key name."""

    __slots__ = ("_digests", "_policies", "default")

    def __init__(
        self,
        digests: Sequence[tuple[bytes, str]],
        policies: dict[str, KeyPolicy],
        default: RateLimitSpec,
    ) -> None:
        self._digests = tuple(digests)
        self._policies = policies
        #: The gateway's own rate limits, for names without a ``keys:`` entry.
        self.default = default

    def __bool__(self) -> bool:
        return bool(self._digests)

    @property
    def names(self) -> list[str]:
        """Every key name, in the order first configured."""
        return list(dict.fromkeys(name for _, name in self._digests))

    def name_of(self, presented: str) -> str | None:
        """The name of the key ``presented``, or ``None``. Every digest is compared, in
        constant time, whatever matched: timing tells nothing about which key matched."""
        candidate = hashlib.sha256(presented.encode()).digest()
        matched: str | None = None
        for digest, name in self._digests:
            if hmac.compare_digest(candidate, digest) and matched is None:
                matched = name
        return matched

    def policy(self, name: str) -> KeyPolicy:
        """The policy of key name ``name`` (the default one for names the YAML does not list)."""
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = KeyPolicy(name=name, rate_limit=self.default)
        return policy

    def configured(self, name: str) -> KeyPolicy:
        """The policy of a configured key name.

        Raises:
            NotFoundError: no key has that name.
        """
        if name not in self.names and not (name == ANONYMOUS and not self):
            raise NotFoundError(f"no key is named {name!r}", param="key")
        return self.policy(name)


def key_ring(
    api_keys: Sequence[ApiKey], configured: Sequence[ConfiguredKey], default: RateLimitSpec
) -> KeyRing:
    """The ring of the environment's keys and the YAML's ``keys:`` entries."""
    digests = [
        (hashlib.sha256(key.secret.reveal().encode()).digest(), key.name) for key in api_keys
    ]
    policies: dict[str, KeyPolicy] = {}
    for entry in configured:
        spec = entry.spec
        digests.append((entry.digest, spec.name))
        overrides = spec.rate_limit
        limits = default
        if overrides is not None:
            limits = msgspec.structs.replace(
                default,
                requests_per_minute=overrides.requests_per_minute or default.requests_per_minute,
                concurrent_fusions=overrides.concurrent_fusions or default.concurrent_fusions,
            )
        policies[spec.name] = KeyPolicy(
            name=spec.name,
            budget=spec.budget_usd,
            rate_limit=limits,
            panels=frozenset(spec.panels) if spec.panels is not None else None,
            passthrough=spec.passthrough,
        )
    _check_one_name_per_key(digests)
    return KeyRing(digests, policies, default)


def _check_one_name_per_key(digests: Sequence[tuple[bytes, str]]) -> None:
    """Refuse one key under two names: it would only ever match the first, so the other
    name's budget, allow-list and limits would silently never apply.

    Raises:
        ConfigError: a key is given two names (named, never shown).
    """
    names: dict[bytes, str] = {}
    for digest, name in digests:
        if not digest:  # a key_env that is unset (``fusion spend``): matches no key
            continue
        first = names.setdefault(digest, name)
        if first != name:
            raise ConfigError(
                f"the key names {first!r} and {name!r} are given the same key "
                "(FUSION_SERVER_API_KEYS or keys:); give each name its own key"
            )
