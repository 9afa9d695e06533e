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


_encode_line = msgspec.json.Encoder(enc_hook=repr).encode


def render_json(_: Any, __: str, event_dict: structlog.typing.EventDict) -> bytes:
    """The event as one JSON object; anything JSON cannot hold goes out as its ``repr``."""
    return _encode_line(event_dict)


def _output(console: bool) -> tuple[structlog.typing.Processor, Any]:
    """The last processor and the logger factory: console text, JSON bytes to stdout's byte
    buffer, or JSON text when stdout has no byte buffer (a test runner's capture, an embedding
    app)."""
    if console:
        return structlog.dev.ConsoleRenderer(), structlog.PrintLoggerFactory(sys.stdout)
    stdout_bytes = getattr(sys.stdout, "buffer", None)
    if stdout_bytes is None:
        return structlog.processors.JSONRenderer(), structlog.PrintLoggerFactory(sys.stdout)
    # Text already written through sys.stdout must not land after lines written beneath it.
    sys.stdout.flush()
    return render_json, structlog.BytesLoggerFactory(stdout_bytes)


def configure_logging(settings: Settings) -> None:
    """Configure structlog (process-wide by nature) for the settings' format and level."""
    renderer, logger_factory = _output(settings.log_format == "console")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            _LEVELS.get(settings.log_level, logging.INFO)
        ),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
