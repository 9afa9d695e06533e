"""Model ids: ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/embeddings``.

The list names the panels first (``fusion/<panel>``), then, when passthrough is on, the
passthrough provider's own models (a caller that sends a key with an allow-list sees only what
it may use) (its ``GET /models``, kept 10 minutes per worker; when that
fails, the panels alone). One model is found by its id as the client wrote it: ``fusion/<panel>``
or its alias ``fusion-<panel>``, or a provider model. Embeddings are passed through like any
call that is not fused.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post

from ..errors import InvalidRequestError, UnknownModelError
from ..keys import KeyPolicy
from ..plan import MODEL_PREFIX, panel_of_model
from .admission import admit
from .auth import caller_policy
from .errors import json_response
from .gateway import Gateway, gateway_of
from .model_list import ModelCard, ModelList, provider_cards
from .openapi import documented, embeddings_operation, error_replies, json_reply, schema_of
from .passthrough import passthrough_post, passthrough_provider

#: A provider's model list must come quickly: a client is waiting on ``/v1/models``.
MODEL_LIST_TIMEOUT_S = 10.0


async def provider_models(gateway: Gateway) -> list[ModelCard]:
    """The passthrough provider's models (none when passthrough is off or the fetch fails)."""
    if not gateway.config.gateway.passthrough.enabled:
        return []

    async def fetch() -> list[ModelCard]:
        provider = passthrough_provider(gateway, "")
        listing = await gateway.engine.upstream.get_json(
            provider, "/models", timeout_s=MODEL_LIST_TIMEOUT_S
        )
        return provider_cards(listing, created=gateway.started_at)

    return await gateway.provider_models.get(fetch)


def panel_cards(gateway: Gateway, policy: KeyPolicy | None = None) -> list[ModelCard]:
    """One ``fusion/<panel>`` model per loaded panel (those on ``policy``'s allow-list)."""
    allowed = policy.panels if policy is not None else None
    return [
        ModelCard(id=f"{MODEL_PREFIX}{name}", created=gateway.started_at)
        for name in gateway.engine.panels
        if allowed is None or name in allowed
    ]


@get(
    "/v1/models",
    summary="The fusion panels, then the passthrough provider's models, as OpenAI models",
    operation_class=documented({"200": json_reply("OpenAI's model list.", schema_of(ModelList))}),
)
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The panels as ``fusion/<panel>``, then the passthrough provider's models; for a caller
    that sends its key, only what that key may use."""
    gateway = gateway_of(request)
    policy = caller_policy(request)
    cards = panel_cards(gateway, policy)
    if policy is None or policy.passthrough:
        cards += await provider_models(gateway)
    return json_response(ModelList(data=cards))


@get(
    "/v1/models/{model_id:path}",
    summary="One model",
    operation_class=documented(
        {"200": json_reply("OpenAI's model object.", schema_of(ModelCard)), **error_replies(404)}
    ),
)
async def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
    """One model by its id as the client wrote it (``/`` sent raw or as ``%2F``)."""
    gateway = gateway_of(request)
    model_id = model_id.removeprefix("/")  # Litestar's path parameters keep the leading slash
    panel = panel_of_model(model_id)
    if panel is not None:
        if panel in gateway.engine.panels:
            return json_response(ModelCard(id=model_id, created=gateway.started_at))
    else:
        for card in await provider_models(gateway):
            if card.id == model_id:
                return json_response(card)
    raise UnknownModelError(f"the model {model_id!r} does not exist", param="model")


@post(
    "/v1/embeddings",
    status_code=200,
    summary="OpenAI-compatible embeddings, passed through to the passthrough provider",
    operation_class=embeddings_operation(),
)
async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
    """Relay an embeddings request to the passthrough provider (fusion models make none)."""
    admitted = await admit(request)
    raw = admitted.body
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a non-empty string", param="model")
    if panel_of_model(model) is not None:
        raise InvalidRequestError(
            f"{model!r} is a fusion panel, which makes no embeddings: name an embedding model",
            param="model",
        )
    gateway = gateway_of(request)
    await admitted.admit_passthrough(gateway, model, raw.get("input"))
    return await passthrough_post(request, gateway, "/embeddings", raw, model)
