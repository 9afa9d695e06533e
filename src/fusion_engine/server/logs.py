"""structlog set-up: JSON lines in production, readable console output in development.

Keys and authorization headers are never passed to a logger in the first place; this module
only decides the format and level. Every routed request writes a line, so the JSON path is
kept cheap: msgspec renders the event straight to bytes and the bytes go to stdout's buffer
(the stdlib ``json.dumps`` + ``print`` route cost about 5% of a request's CPU).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

from ..settings import Settings

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _unrenderable(value: Any) -> str:
    return repr(value)


_encode_line = msgspec.json.Encoder(enc_hook=_unrenderable).encode


def render_json(_: Any, __: str, event_dict: structlog.typing.EventDict) -> bytes:
    """The event as one JSON object; anything JSON cannot hold goes out as its ``repr``."""
    return _encode_line(event_dict)


def configure_logging(settings: Settings) -> None:
    """Configure structlog (process-wide by nature) for the settings' format and level."""
    level = _LEVELS.get(settings.log_level, logging.INFO)
    console = settings.log_format == "console"
    # A replaced stdout (a test runner's capture, an embedding app) may have no byte buffer.
    stdout_bytes = getattr(sys.stdout, "buffer", None)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else render_json
    )
    if not console and stdout_bytes is None:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=(
            structlog.PrintLoggerFactory(sys.stdout)
            if console or stdout_bytes is None
            else structlog.BytesLoggerFactory(stdout_bytes)
        ),
        cache_logger_on_first_use=True,
    )
