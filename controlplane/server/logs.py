"""structlog JSON logs; every line carries the node id, its Raft role and term."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog


def configure(node_id: str, level: str, context: Callable[[], dict[str, Any]], *, final: bool = True) -> None:
    """``context`` returns the live fields (role, term) added to every line. ``final=False`` for a
    configuration that a later call replaces (before the server starts): loggers used meanwhile
    are not cached with it, so the later one reaches them too."""

    def add_node_context(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("node", node_id)
        event.update(context())
        return event

    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    # pysyncobj logs through the standard library; route it through structlog's renderer too.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_node_context,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=final,
    )
