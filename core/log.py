"""Logs through structlog, always to stderr (stdout carries the guest's serial output)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "warning", json: bool = False) -> None:
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


if not structlog.is_configured():
    configure()
