"""The fake upstream's wire objects: completion bodies, stream deltas, error bodies in each
provider's shape, and ``/models`` entries, in OpenRouter's flavour. Pure functions, no I/O.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Mapping
from decimal import Decimal
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final

from fusion_engine.testing.script import PROVIDER_ERROR_CODE, PROVIDER_NAME, Answer, ErrorShape

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_MODEL_CREATED: Final = 1_700_000_000
_CONTEXT_LENGTH: Final = 131_072
_OPENROUTER_ERROR_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "invalid_request",
        401: "authentication",
        402: "payment_required",
        403: "permission_denied",
        404: "not_found",
        408: "timeout",
        413: "payload_too_large",
        422: "unprocessable",
        429: "rate_limit_exceeded",
        500: "server",
        502: "provider_unavailable",
        503: "provider_overloaded",
        504: "timeout",
    }
)
_OPENAI_ERROR_TYPES: Final[Mapping[int, tuple[str, str | None]]] = MappingProxyType(
    {
        401: ("authentication_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        503: ("service_unavailable_error", "server_is_overloaded"),
    }
)


def generation_id() -> str:
    """Return a fresh OpenRouter-style generation id, ``gen-<unix time>-<20 random chars>``."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
    return f"gen-{int(time.time())}-{suffix}"


def completion_body(answer: Answer, model: str, gen_id: str) -> dict[str, Any]:
    """Build a non-streamed ``chat.completion`` body in OpenRouter's flavour."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
    if answer.reasoning is not None:
        message["reasoning"] = answer.reasoning
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.tool_calls
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": answer.finish_reason,
        "native_finish_reason": answer.finish_reason,
        "logprobs": None,
    }
    if answer.choice_error is not None:
        choice["error"] = answer.choice_error
    body: dict[str, Any] = {
        "id": gen_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "provider": PROVIDER_NAME,
        "choices": [choice],
    }
    if answer.usage is not None:
        body["usage"] = answer.usage
    return body


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_deltas(answer: Answer, size: int) -> list[dict[str, Any]]:
    """Split an answer into the deltas that follow the role chunk, ``size`` characters each.

    Reasoning comes first, then content, then each tool call: a first fragment with ``id``,
    ``type``, ``name`` and ``arguments: ""``, then pieces of ``arguments`` under ``index`` only.
    """
    deltas: list[dict[str, Any]] = [{"reasoning": p} for p in _pieces(answer.reasoning or "", size)]
    deltas += [{"content": p} for p in _pieces(answer.content or "", size)]
    for index, call in enumerate(answer.tool_calls):
        # Only the first fragment names the call: clients concatenate string fields, so a
        # repeated id or name would come out doubled.
        function = {"name": call.name, "arguments": ""}
        first = {"index": index, "id": call.id, "type": "function", "function": function}
        deltas.append({"tool_calls": [first]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in _pieces(call.arguments, size)
        ]
    return deltas


def stream_error_event(message: str) -> dict[str, Any]:
    """Return the ``error`` and terminating choice of OpenRouter's mid-stream error event."""
    error_type = _OPENROUTER_ERROR_TYPES[PROVIDER_ERROR_CODE]
    error = {
        "code": PROVIDER_ERROR_CODE,
        "message": message,
        "metadata": {"error_type": error_type},
    }
    choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
    return {"error": error, "choices": [choice]}


def status_phrase(status: int) -> str:
    """Return the HTTP reason phrase for ``status`` ("Error" for codes ``http`` does not know)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(shape: ErrorShape, status: int, message: str) -> tuple[Any, bool]:
    """Return an error body in one upstream's shape and whether it is HTML (else JSON)."""
    if shape == "openrouter":
        metadata = {"error_type": _OPENROUTER_ERROR_TYPES.get(status, "unmapped")}
        return {"error": {"code": status, "message": message, "metadata": metadata}}, False
    if shape == "openai":
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        error_type, code = _OPENAI_ERROR_TYPES.get(status, (default_type, None))
        error = {"message": message, "type": error_type, "param": None, "code": code}
        return {"error": error}, False
    if shape == "vllm":
        phrase = status_phrase(status).replace(" ", "").replace("-", "")
        error_type = phrase if phrase.endswith("Error") else f"{phrase}Error"
        flat = {"object": "error", "message": message, "type": error_type, "param": None}
        return {**flat, "code": status}, False
    if shape == "html":
        title = f"{status} {status_phrase(status)}"
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return page, True
    return {"error": message}, False


def _price_string(value: float) -> str:
    # OpenRouter writes prices as plain decimals ("0.000001"), never in exponent notation.
    return format(Decimal(repr(value)), "f")


def model_entry(slug: str, price: tuple[float, float]) -> dict[str, Any]:
    """Return one ``/models`` entry in OpenRouter's shape (prices are USD-per-token strings)."""
    return {
        "id": slug,
        "canonical_slug": slug,
        "name": f"{PROVIDER_NAME}: {slug}",
        "created": _MODEL_CREATED,
        "description": "A scripted model served by the fake upstream.",
        "context_length": _CONTEXT_LENGTH,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
        },
        "pricing": {
            "prompt": _price_string(price[0]),
            "completion": _price_string(price[1]),
            "request": "0",
            "image": "0",
        },
        "top_provider": {
            "context_length": _CONTEXT_LENGTH,
            "max_completion_tokens": 32_768,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice"],
        "default_parameters": {},
        "expiration_date": None,
    }
