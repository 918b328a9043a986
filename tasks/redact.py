"""Passwords embedded in endpoint URLs (``http://user:secret@host``) never reach a log, tag or file.

MLflow, boto3 and requests accept credentials in a URL's userinfo, so users put them there
(``MLFLOW_TRACKING_URI=https://ci:token@mlflow.internal``). Everything trainyard shows or
records about an endpoint goes through :func:`redact` first; only the live client sees the
real URL.
"""

from __future__ import annotations

import logging
import re

# scheme://user:password@  (the password part is what goes; the user name stays, it says whose)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@/\s]+)@")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL passwords from every record it passes (message and args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, plus the user and password (None when absent)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=host)), user, password


# Values this process has seen with a password, by their redacted form: the CLI hands the
# redacted form to Prefect (which stores flow parameters in its database) and the flow
# asks for the real one back. Process memory only, never written anywhere.
_HIDDEN: dict[str, str] = {}


def hide(text: str) -> str:
    """``text`` redacted, remembering the original for :func:`reveal` in this process."""
    shown = redact(text)
    if shown != text:
        _HIDDEN[shown] = text
    return shown


def reveal(text: str) -> str:
    """The original of a value :func:`hide` redacted in this process (else ``text`` as it is)."""
    return _HIDDEN.get(text, text)


def redact_log_handlers() -> None:
    """Add a :class:`RedactingFilter` to every handler of the root and Prefect loggers (the API's too)."""
    for name in (
        "",
        "prefect",
        "prefect.flow_runs",
        "prefect.task_runs",
        "prefect.extra",
        "uvicorn",
        "fastapi",
        "mlflow",
    ):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
