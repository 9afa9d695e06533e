"""structlog set-up: JSON lines in production, readable console output in development.

Keys and authorization headers are never passed to a logger in the first place; this module
only decides the format and level.
"""

from __future__ import annotations

import logging
import sys

import structlog

from ..settings import Settings

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure_logging(settings: Settings) -> None:
    """Configure structlog (process-wide by nature) for the settings' format and level."""
    level = _LEVELS.get(settings.log_level, logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
