"""Keeping secrets out of the logs.

Bot tokens travel inside URLs (`https://api.telegram.org/bot<token>/sendMessage`), and
libraries log URLs (httpx at INFO) and put them into exception messages. `SecretFilter`
replaces every known secret in a log record, its arguments and its traceback text with
`[REDACTED]`; `redact_logs` puts it on the handlers that write the process's logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        parts: set[str] = set()
        for secret in secrets:
            parts.add(secret)
            # A Telegram token is "<bot id>:<key>"; the key alone is the secret part.
            parts.add(secret.partition(":")[2])
        # Longest first, so a whole token is replaced before the key inside it.
        self.secrets = sorted((p for p in parts if len(p) >= MIN_SECRET_CHARS), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        # Format now, once, and keep only the redacted result: the handler's formatter
        # then has nothing left to interpolate or render from the live exception.
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def redact_logs(secrets: Iterable[str], logger: logging.Logger | None = None) -> SecretFilter:
    """Add a SecretFilter to every handler of `logger` (default: the root logger)."""
    logger = logger or logging.getLogger()
    secret_filter = SecretFilter(secrets)
    for handler in logger.handlers:
        handler.addFilter(secret_filter)
    # httpx logs each request's URL, token included, at INFO: one line per Bot API call is noise anyway.
    logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").getEffectiveLevel(), logging.WARNING))
    return secret_filter


@contextlib.contextmanager
def redacted_logs(secrets: Iterable[str], logger: logging.Logger | None = None) -> Iterator[SecretFilter]:
    """`redact_logs` for the length of a block; the filter leaves the handlers afterwards, so a
    process that runs the bot more than once (the tests) does not stack filters."""
    logger = logger or logging.getLogger()
    secret_filter = redact_logs(secrets, logger)
    try:
        yield secret_filter
    finally:
        for handler in logger.handlers:
            handler.removeFilter(secret_filter)
