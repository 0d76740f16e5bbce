"""Structured logging: structlog events rendered by the standard library's ``logging``.

Every module logs through :func:`get_logger`, which returns a structlog logger whose events travel
through stdlib ``logging``; third-party libraries that use ``logging`` directly end up in the same
stream and the same format. :func:`configure_logging` decides only *how* records are rendered
(console ``key=value`` lines or one JSON object per line, on stderr) and *which* level passes.

The structlog processor chain is the same whatever the settings, so loggers may be created and
cached at import time, before :func:`configure_logging` runs; reconfiguring replaces only the one
stdlib handler this module installs (tests' capture handlers are left alone).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

from diskless.config import LoggingSettings

__all__ = ["configure_logging", "get_logger"]

_HANDLER_NAME = "diskless"
"""Marks the root handler this module owns, so reconfiguring replaces it and nothing else."""

# Run on every event, whether it came from structlog or from a plain stdlib logger.
_SHARED_PROCESSORS: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _renderers(settings: LoggingSettings, stream: TextIO) -> list[Processor]:
    if settings.format == "json":
        return [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    return [
        structlog.dev.ConsoleRenderer(
            colors=stream.isatty(),
            # A plain traceback keeps an operator's journal readable; rich's boxes do not.
            exception_formatter=structlog.dev.plain_traceback,
        )
    ]


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> None:
    """Route structlog through stdlib logging and render records on ``stream`` (stderr).

    Safe to call more than once: the handler installed by an earlier call is replaced.
    """
    out = stream if stream is not None else sys.stderr
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderers(settings, out),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(_LEVELS[settings.level])


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger named ``name`` (pass ``__name__``), configured at first use."""
    return structlog.stdlib.get_logger(name)
