"""Test doubles for Fusion Engine: a scriptable fake OpenAI/OpenRouter-compatible upstream.

Example::

    async with FakeUpstream() as fake:
        fake.script("deepseek/deepseek-v4-flash", Reply(text="42", delay_s=0.2))
        ...  # point a client at fake.base_url
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusion_engine.testing.script import (
    ErrorShape,
    FakeToolCall,
    ReceivedRequest,
    Reply,
    load_script,
    parse_script,
)

if TYPE_CHECKING:
    from fusion_engine.testing.fake_upstream import FakeUpstream

__all__ = [
    "ErrorShape",
    "FakeToolCall",
    "FakeUpstream",
    "ReceivedRequest",
    "Reply",
    "load_script",
    "parse_script",
]


def __getattr__(name: str) -> object:
    # Imported lazily so that `python -m fusion_engine.testing.fake_upstream` does not find the
    # module already imported by its package (runpy warns and the module would load twice).
    if name == "FakeUpstream":
        from fusion_engine.testing.fake_upstream import FakeUpstream

        return FakeUpstream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
