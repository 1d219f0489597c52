"""Structured logging: one line per event, with tenant/timeline/request from context.

Every service calls ``setup_logging(service, level)`` once.  Modules log through
``logging.getLogger(__name__)`` with lazy %-arguments; the request context
(tenant, timeline, request id) lives in ContextVars that the gRPC interceptor and the
gateway set per request, and a filter appends it to every record, so a line reads:

    2026-11-24T23:59:01.123Z INFO pageread services.pageread.server: getpage done lsn=0/16B3748 tenant=… timeline=…

Newlines inside a message or traceback are escaped, so one event is always one line.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

tenant_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
timeline_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("timeline", default=None)
request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


class ContextFilter(logging.Filter):
    """Appends the context's ids, except those the message already names."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        message: str | None = None
        for name, var in (("tenant", tenant_var), ("timeline", timeline_var),
                          ("request", request_var)):
            value = var.get()
            if value:
                if message is None:
                    message = record.getMessage()
                if f"{name}=" not in message:
                    parts.append(f"{name}={value}")
        record.ctx = (" " + " ".join(parts)) if parts else ""
        return True


class OneLineFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s%(ctx)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "ctx"):
            record.ctx = ""
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(service: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("sqlalchemy", "alembic", "botocore", "urllib3", "azure", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)
