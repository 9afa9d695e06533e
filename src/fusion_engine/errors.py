"""The one exception tree of Fusion Engine.

Every error a caller can see is a ``FusionError``; each carries the HTTP status, OpenAI error
``type`` and ``code`` the gateway answers with, so translation to the wire happens in one place::

    FusionError                         500 server_error
    ├── ConfigError                     500 (a gateway config, panel or judge file is invalid)
    │   └── ConfigFileError             500 (names the file and the offending field)
    ├── InvalidRequestError             400 invalid_request_error (carries ``param``)
    ├── AuthenticationError             401 authentication_error
    ├── CostLimitError                  402 cost_limit_exceeded
    ├── BudgetExceededError             402 budget_exceeded (the key name's budget)
    ├── PermissionDeniedError           403 permission_error (a key's allow-list)
    ├── NotFoundError                   404 not_found_error
    │   ├── UnknownPanelError
    │   └── UnknownJudgeTemplateError
    ├── PayloadTooLargeError            413 invalid_request_error
    ├── UnsupportedMediaTypeError       415 invalid_request_error (keyless mode: JSON only)
    ├── MisdirectedRequestError         421 invalid_request_error (keyless mode: loopback Host)
    ├── RateLimitedError                429 rate_limit_error (carries ``retry_after``)
    ├── UpstreamError                   one call failed (status, provider message, retryable)
    │   └── UpstreamTimeoutError        the call ran out of time
    ├── PanelFailedError                502 every member failed, at least one not by timeout
    │   ├── PanelTimeoutError           504 every member failed by timeout
    │   ├── PanelRejectedError          400/404/413/422 every member refused the request alike
    │   └── PanelRateLimitedError       429 every member was rate limited (``retry_after``)
    ├── JudgeFailedError                502 the judge broke off after its answer began streaming
    ├── ProviderKeyMissingError         503 the provider's API key variable is not set
    └── StoreUnavailableError           503 the shared store (Redis) cannot be read right now

Foreign exceptions (aiohttp, msgspec, yaml) are translated at the module boundary with
``raise ... from exc``; no key or authorization header ever appears in a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .results import PanelResponse


class FusionError(Exception):
    """Base of every error Fusion Engine raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(FusionError):
    """A gateway config, panel or judge template is invalid."""

    error_type = "configuration_error"
    code = "invalid_configuration"


class ConfigFileError(ConfigError):
    """A config or panel file is invalid; the message names the file and the field."""

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.field = field
        self.problem = problem


class InvalidRequestError(FusionError):
    """The caller sent something the gateway cannot use."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(FusionError):
    """Missing or wrong bearer key."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class CostLimitError(FusionError):
    """The estimated cost of the request is over the configured ceiling."""

    status_code = 402
    error_type = "cost_limit_error"
    code = "cost_limit_exceeded"


class BudgetExceededError(FusionError):
    """The request's estimated cost is over what is left of its key name's budget."""

    status_code = 402
    error_type = "budget_error"
    code = "budget_exceeded"


class PermissionDeniedError(FusionError):
    """The caller's key may not use what it asked for (a panel off its allow-list)."""

    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class NotFoundError(FusionError):
    """A named thing (panel, model, template) does not exist."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class UnknownPanelError(NotFoundError):
    """No panel by that name is loaded."""

    code = "model_not_found"


class UnknownModelError(NotFoundError):
    """No panel and no passthrough model has that id."""

    code = "model_not_found"


class UnknownJudgeTemplateError(NotFoundError):
    """No judge template by that name is loaded."""

    code = "judge_template_not_found"


class PayloadTooLargeError(FusionError):
    """The request body or one of its lists is over a configured limit."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaTypeError(FusionError):
    """The body is not ``application/json`` where only JSON is accepted."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class MisdirectedRequestError(FusionError):
    """The ``Host`` header names a server this one does not serve (keyless mode: loopback)."""

    status_code = 421
    error_type = "invalid_request_error"
    code = "host_not_allowed"


class RateLimitedError(FusionError):
    """The caller is over its rate limit."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider answered when it refused a call: the status, its OpenAI error fields
    (``None`` where it sent none) and the ``Retry-After`` it asked for."""

    status: int
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None


class UpstreamError(FusionError):
    """One call to an upstream provider failed.

    Args:
        message: the provider's own message (never containing our key).
        status: the HTTP status the provider answered, or ``None`` for a connection failure.
        retryable: whether the same call may succeed if tried again.
        retry_after: seconds the provider asked us to wait, if it said.
        kind: a short machine-readable reason (``http_429``, ``connection``, ``timeout``...).
    """

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: str = "upstream",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind
        #: How many attempts were made before giving up (set by the upstream client).
        self.attempts = 1
        #: The provider's status and error fields, when it answered with an error body.
        self.provider_error: ProviderErrorInfo | None = None
        #: The provider's own message (key removed), relayed as is by the passthrough.
        self.provider_message: str | None = None
        #: The gateway stopped because the provider's ``Retry-After`` was longer than the time
        #: left: a client that waits that long may succeed (any other failure had its retries).
        self.retry_later = False


class UpstreamTimeoutError(UpstreamError):
    """An upstream call did not finish within its time budget."""

    status_code = 504
    code = "upstream_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, kind="timeout")


class PanelFailedError(FusionError):
    """No member of the panel produced an answer; ``responses`` tells what each one did."""

    status_code = 502
    error_type = "upstream_error"
    code: str | None = "panel_failed"

    def __init__(self, message: str, *, responses: list[PanelResponse] | None = None) -> None:
        super().__init__(message)
        self.responses = responses or []
        #: See ``UpstreamError.retry_later``; every member's calls had their retries otherwise.
        self.retry_later = False


class PanelTimeoutError(PanelFailedError):
    """No member answered, and every failure was a timeout."""

    status_code = 504
    code = "panel_timeout"


class PanelRejectedError(PanelFailedError):
    """Every member refused the request with the same client-side status (400, 404, 413, 422):
    the request itself is at fault, so the client gets that status and the first member's
    provider ``type``, ``code`` and ``param`` (e.g. ``context_length_exceeded``)."""

    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        info: ProviderErrorInfo,
        responses: list[PanelResponse] | None = None,
    ) -> None:
        super().__init__(message, responses=responses)
        self.status_code = status
        self.error_type = info.type or self.error_type
        self.code = info.code
        self.param = info.param


class PanelRateLimitedError(PanelFailedError):
    """Every member was rate limited: 429 with the longest ``Retry-After`` any member got."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        retry_later: bool = False,
        responses: list[PanelResponse] | None = None,
    ) -> None:
        super().__init__(message, responses=responses)
        self.retry_after = retry_after
        self.retry_later = retry_later


class JudgeFailedError(FusionError):
    """The judge chain failed, and no member answer could stand in: part of the judge's answer
    was already streamed, or no member answer passes the panel's tool quorum."""

    status_code = 502
    error_type = "upstream_error"
    code = "judge_failed"


class ProviderKeyMissingError(FusionError):
    """A provider's API key environment variable is not set."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "provider_key_missing"

    def __init__(self, provider: str, variable: str) -> None:
        super().__init__(
            f"provider {provider!r} needs an API key: set the environment variable {variable}"
        )
        self.provider = provider
        self.variable = variable


class StoreUnavailableError(FusionError):
    """What was asked lives in the shared store (Redis), which cannot be read right now."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "store_unavailable"
