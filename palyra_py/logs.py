"""structlog set-up: console lines for people, JSON lines for machines, both on stderr.
Nothing logged anywhere carries a secret or a full signature; callers pass ids and reasons."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    # Tracebacks are rendered WITHOUT local variables, in both formats: a frame's locals can
    # hold a resolved secret (rich's and structlog's defaults would print them).
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback,
        ))
    structlog.configure(
        processors=[
            *processors,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line: a redirected stderr is unbuffered, and print() writes the
        # line and its newline apart, so the lines of the daemon's processes (which share
        # stderr) could interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
