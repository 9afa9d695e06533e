"""Admission: the one gate every route that spends money goes through.

``admit`` does, in order: auth (the caller's key *name*, and so its policy), the request rate
limit, opening the request's spend tab, reading the body as a JSON object, and the list limits
(messages, tools). Once the route knows what it will call, ``Admitted.hold`` holds the
estimated cost against the key's budget (402 over it) and ``Admitted.fusion_slot`` hands out
the concurrent-fusion slot that a fusion holds for its whole life, streamed or not. Chat
completions, ``/fuse``, the Responses and the Messages routes all come through here, naming
where their bodies keep their lists (``BodyShape``).

Without keys, ``keyless_guard`` protects the loopback-only server from web pages: ``POST``
bodies must be ``application/json`` (a page can send ``text/plain`` or a form cross-site
without asking; JSON needs a CORS preflight this server never grants), and the ``Host`` must
be a loopback name or address (a DNS-rebinding page names its own host).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request

from ..config import LimitsSpec
from ..errors import (
    InvalidRequestError,
    MisdirectedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from ..keys import KeyPolicy, KeyRing
from ..plan import FusionPlan
from ..ratelimit import Lease, RateLimiter
from ..settings import Settings
from ..spend import Tab
from .auth import authenticate
from .gateway import Gateway, gateway_of
from .observe import facts_of
from .serving import is_loopback

_decode = msgspec.json.Decoder().decode
#: A JSON string escape: a surrogate pair, a lone surrogate, or any other escape (matched so an
#: escaped backslash is never read as the start of a ``\u`` escape).
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\\."
)


class BodyShape(msgspec.Struct, frozen=True):
    """Where a route's body keeps the lists admission limits, so a 413 names the client's
    own field (``messages`` in chat and /fuse, ``input`` in the Responses API)."""

    messages: str = "messages"
    tools: str = "tools"


CHAT_SHAPE = BodyShape()


class Admitted:
    """A request let in: who is calling (its key's policy and spend tab), and its body as a
    JSON object."""

    __slots__ = ("_limiter", "body", "key_name", "policy", "tab")

    def __init__(
        self, limiter: RateLimiter, policy: KeyPolicy, tab: Tab, body: dict[str, Any]
    ) -> None:
        self._limiter = limiter
        #: The caller's key name (``anonymous`` without keys): rate limits, cache scope, spend.
        self.key_name = policy.name
        self.policy = policy
        #: What this request spends, charged to its key name when it ends.
        self.tab = tab
        self.body = body

    async def admit_fusion(self, gateway: Gateway, plan: FusionPlan, *, ad_hoc: bool) -> FusionPlan:
        """The plan this caller may run: a panel on its key's allow-list, under the cost
        ceiling (trimmed or refused), with its estimated cost held against the key's budget.

        Raises:
            PermissionDeniedError: the panel (or an ad-hoc member list) is not allowed (403).
            CostLimitError: the estimate is over the cost ceiling (402).
            BudgetExceededError: the estimate is over what is left of the budget (402).
        """
        self.policy.check_panel(None if ad_hoc else plan.panel.name)
        plan = gateway.within_budget(plan)
        # Estimated only for a budget: the estimate measures the whole conversation.
        estimate = gateway.estimate_cost(plan) if self.policy.budget is not None else None
        await self.hold(estimate, plan.conversation)
        return plan

    async def admit_passthrough(self, gateway: Gateway, model: str, messages: object) -> None:
        """Let a plain model call through: passthrough allowed for the key, and its estimated
        cost (at learnt or configured prices; 0 when unknown) held against the key's budget.

        Raises:
            PermissionDeniedError: the key may only fuse (403).
            BudgetExceededError: the estimate is over what is left of the budget (402).
        """
        self.policy.check_passthrough(model)
        estimate = None
        if self.policy.budget is not None:
            self.tab.prompt = messages
            estimate = gateway.ledger.pricing.answer_cost(model, self.tab.prompt_tokens)
        await self.hold(estimate, messages)

    async def hold(self, estimate_usd: float | None, prompt: object) -> None:
        """Hold the estimated cost of what the request will call against its key's budget;
        ``prompt`` (the conversation sent upstream) prices calls cut off in flight.

        Raises:
            BudgetExceededError: the estimate is over what is left of the budget (402).
        """
        self.tab.prompt = prompt
        await self.tab.hold(estimate_usd)

    async def fusion_slot(self) -> Lease:
        """One of the caller's concurrent-fusion slots; the fusion releases it when it ends
        (``FusionRun`` does for streams), however it ends.

        Raises:
            RateLimitedError: every slot of the caller's key name is taken.
        """
        return await self._limiter.fusion_slot(self.key_name, self.policy.rate_limit)


async def admit(
    request: Request[Any, Any, Any], shape: BodyShape = CHAT_SHAPE, *, read_body: bool = True
) -> Admitted:
    """Let a request that spends money (or reads a caller's data) in, or refuse it with the
    right error. ``read_body=False`` for a route without a body (``GET``/``DELETE
    /v1/responses/{id}``): auth and the request rate limit only.

    Raises:
        AuthenticationError: the key is missing or wrong (401).
        RateLimitedError: the key name is over its requests per minute (429).
        InvalidRequestError: the body is not a JSON object (400).
        PayloadTooLargeError: a list is over its limit (413; the body size limit is Litestar's).
    """
    gateway = gateway_of(request)
    key_name = authenticate(request)
    facts = facts_of(request)
    facts.key = key_name
    policy = gateway.keys.policy(key_name)
    await gateway.limiter.check_request(key_name, policy.rate_limit)
    if not read_body:
        return Admitted(gateway.limiter, policy, gateway.ledger.open(policy), {})
    body = decode_object(await request.body())
    check_lists(body, shape, gateway.config.gateway.limits)
    tab = facts.tab = gateway.ledger.open(policy)
    return Admitted(gateway.limiter, policy, tab, body)


def decode_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        InvalidRequestError: not JSON, or not an object.
    """
    try:
        try:
            raw = _decode(body)
        except msgspec.DecodeError:
            # A lone surrogate escape (``"\ud83d"``) is valid JSON, and what JavaScript writes
            # for a string cut inside an emoji, but msgspec refuses it: read it as U+FFFD.
            repaired = _ESCAPE.sub(_without_lone_surrogate, body)
            if repaired == body:
                raise
            raw = _decode(repaired)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequestError("the request body is nested too deeply") from exc
    if not isinstance(raw, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return raw


def _without_lone_surrogate(escape: re.Match[bytes]) -> bytes:
    text = escape.group()
    if len(text) == 6 and text[2:3] in b"dD":  # a surrogate escape that is not half a pair
        return b"\\ufffd"
    return text


def check_lists(body: dict[str, Any], shape: BodyShape, limits: LimitsSpec) -> None:
    """Refuse a body whose messages or tools are over the configured limits (413)."""
    for field, limit, what in (
        (shape.messages, limits.max_messages, "messages"),
        (shape.tools, limits.max_tools, "tools"),
    ):
        value = body.get(field)
        if isinstance(value, list) and len(value) > limit:
            raise PayloadTooLargeError(
                f"{len(value)} {what} is over the limit of {limit}", param=field
            )


# --- keyless mode ----------------------------------------------------------------------------


def host_is_loopback(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (any port)."""
    if not host:
        return False
    try:
        parts = urlsplit("//" + host)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    name = parts.hostname
    return name is not None and is_loopback(name)


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json`` (parameters such as charset allowed)."""
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def keyless_guard(settings: Settings, keys: KeyRing) -> Any:
    """A ``before_request`` hook for a server without keys, or ``None`` when keys are set.

    Every ``POST`` must carry JSON (415 otherwise: the status for a body of a type the
    route does not take). On a loopback-only server (no ``FUSION_ALLOW_NO_AUTH``), every
    request must name a loopback ``Host`` (421 Misdirected Request: the request names a host
    this server does not serve — which is what a DNS-rebinding page's request does; 403 would
    tell clients their credentials lack a permission, and there are none here). With
    ``FUSION_ALLOW_NO_AUTH=1`` the operator serves other hosts on purpose, so only the body
    rule applies.
    """
    if keys:
        return None
    check_host = not settings.allow_no_auth

    async def guard(request: Request[Any, Any, Any]) -> None:
        headers = request.headers
        if check_host and not host_is_loopback(headers.get("host")):
            raise MisdirectedRequestError(
                "this gateway runs without API keys and serves only loopback hosts "
                "(localhost, 127.0.0.1, [::1]); set FUSION_SERVER_API_KEYS to serve others"
            )
        if request.method == "POST" and not is_json(headers.get("content-type")):
            raise UnsupportedMediaTypeError(
                "request bodies must be JSON: send 'Content-Type: application/json'"
            )

    return guard
