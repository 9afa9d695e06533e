"""Model ids through a real `fusion serve` with the official openai client: the ``fusion-<panel>``
alias, ``/v1/models`` (panels, then the provider's models), ``/v1/models/{id}`` and
``/v1/embeddings`` passed through."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

KEYS = ("key-one", "key-two")
PROVIDER_KEY = "provider-secret-key"
PANELS = {"fusion/patient", "fusion/quick", "fusion/trio"}
PROVIDER_MODELS = {"vendor/chat", "vendor/embed"}
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    for slug in PROVIDER_MODELS:  # priced models are what the fake's /models lists
        upstream.fake.prices[slug] = (1e-6, 2e-6)
    process = GatewayProcess(gateway_env(upstream.fake, ",".join(KEYS), provider_key=PROVIDER_KEY))
    yield process
    process.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEYS[0], max_retries=0, timeout=30)


def script_trio(fake: FakeUpstream) -> None:
    for slug in ("e2e/alpha", "e2e/beta", "e2e/gamma"):
        fake.script(slug, Reply(text="Paris."))
    fake.script("e2e/judge", Reply(text="Paris is the capital of France.", chunk_size=5))


# --- /v1/models ------------------------------------------------------------------------------


def test_models_list_panels_then_provider_models(client: OpenAI, gateway: GatewayProcess) -> None:
    """The panels come first, then the passthrough provider's models in OpenAI's shape (owned by
    the id's vendor); the provider key is nowhere in the reply."""
    models = list(client.models.list())
    ids = [model.id for model in models]
    assert set(ids[:3]) == PANELS
    assert set(ids[3:]) >= PROVIDER_MODELS  # the fake also lists models scripted at the time
    assert not any(model.startswith(("fusion/", "fusion-")) for model in ids[3:])
    by_id = {model.id: model for model in models}
    assert by_id["vendor/chat"].owned_by == "vendor"
    assert by_id["vendor/chat"].object == "model"
    raw = httpx.get(f"{gateway.base_url}/v1/models").text
    assert PROVIDER_KEY not in raw


def test_models_list_panels_only_when_the_provider_list_fails(upstream: FakeInThread) -> None:
    """A provider whose /models fails leaves the panels listed, never an error."""
    upstream.fake.reset()
    upstream.fake.models_reply = Reply(status=500)
    process = GatewayProcess(gateway_env(upstream.fake, KEYS[0], provider_key=PROVIDER_KEY))
    try:
        api = OpenAI(base_url=f"{process.base_url}/v1", api_key=KEYS[0], max_retries=0)
        assert {model.id for model in api.models.list()} == PANELS
        with pytest.raises(openai.NotFoundError):
            api.models.retrieve("vendor/chat")
    finally:
        process.stop()
        upstream.fake.reset()


# --- /v1/models/{id} -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fusion/trio", "fusion-trio", "vendor/chat"])
def test_retrieve_one_model_named_as_written(client: OpenAI, model: str) -> None:
    """openai-python sends the id with ``/`` as ``%2F``; the entry's id is the client's."""
    card = client.models.retrieve(model)
    assert card.id == model
    assert card.object == "model"


def test_retrieve_with_a_raw_slash(gateway: GatewayProcess) -> None:
    reply = httpx.get(f"{gateway.base_url}/v1/models/fusion/quick")
    assert reply.status_code == 200
    assert reply.json()["id"] == "fusion/quick"


@pytest.mark.parametrize("model", ["fusion/nope", "fusion-nope", "vendor/nope", "nope"])
def test_retrieve_unknown_model_is_404(client: OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve(model)
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert set(body) == {"message", "type", "param", "code"}


# --- the fusion-<panel> alias on chat ----------------------------------------------------------


def test_alias_fuses_and_names_the_model_as_written(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    reply = client.chat.completions.create(model="fusion-trio", messages=USER)  # type: ignore[arg-type]
    assert reply.model == "fusion-trio"
    assert reply.choices[0].message.content == "Paris is the capital of France."
    assert (reply.model_extra or {})["fusion"]["panel"] == "trio"
    assert len(fake.requests_for("e2e/alpha")) == 1
    assert fake.requests_for("fusion-trio") == []  # never passed through


def test_alias_streams_with_the_model_as_written(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    chunks = list(
        client.chat.completions.create(model="fusion-trio", messages=USER, stream=True)  # type: ignore[arg-type]
    )
    assert chunks and {chunk.model for chunk in chunks} == {"fusion-trio"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital of France."


def test_canonical_id_still_named_canonically(client: OpenAI, fake: FakeUpstream) -> None:
    script_trio(fake)
    reply = client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert reply.model == "fusion/trio"


# --- /v1/embeddings ------------------------------------------------------------------------------


def test_embeddings_pass_through_with_the_provider_key(client: OpenAI, fake: FakeUpstream) -> None:
    """The provider answers (openai-python's base64 default decodes); the provider saw its own
    key, never the client's."""
    reply = client.embeddings.create(model="vendor/embed", input=["hello", "world"])
    assert [len(item.embedding) for item in reply.data] == [8, 8]
    assert reply.model == "vendor/embed"
    (sent,) = fake.requests_for("vendor/embed")
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert all(KEYS[0] not in value for value in sent.headers.values())
    assert sent.body["input"] == ["hello", "world"]


def test_embeddings_need_a_key(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    anonymous = OpenAI(base_url=f"{gateway.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.embeddings.create(model="vendor/embed", input="hello")
    assert fake.requests_for("vendor/embed") == []


@pytest.mark.parametrize("model", ["fusion/trio", "fusion-trio"])
def test_embeddings_on_a_fusion_model_is_400(
    client: OpenAI, fake: FakeUpstream, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=model, input="hello")
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "model"
    assert fake.received == []


def test_embeddings_provider_error_keeps_its_fields(client: OpenAI, fake: FakeUpstream) -> None:
    """A provider's error reaches the client in OpenAI's shape with its type, code and param."""
    error = {"message": "dimensions too large", "type": "invalid_request_error"}
    error |= {"param": "dimensions", "code": "invalid_value"}
    fake.script("vendor/embed", Reply(status=400, body={"error": error}))
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="vendor/embed", input="hello", dimensions=99)
    body = raised.value.body
    assert isinstance(body, dict)
    assert (body["type"], body["code"], body["param"]) == (
        "invalid_request_error", "invalid_value", "dimensions",
    )  # fmt: skip
    assert "dimensions too large" in body["message"]
