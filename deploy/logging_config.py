"""Logging of every `hap` command: one level and one format for all of them, set from the settings.

``deploy.cli.main`` calls :func:`configure` before any command runs; the streams worker hands
:func:`dict_config` to Faust, which installs its own logging when the worker starts. Records go to
standard error (standard output is the commands' own output: ``hap stack status --json``,
``hap simulate``'s summary).

Two formats (:data:`FORMATS`):

* ``text``: ``TIME LEVEL LOGGER MESSAGE``, a traceback on the lines after;
* ``json``: one JSON object per line (python-json-logger) with ``time`` (ISO 8601, UTC),
  ``level``, ``logger`` and ``message``, ``exception`` (the traceback's text) when there is one,
  and whatever ``extra`` fields the record carries. Python's warnings and an exception nothing
  caught are logged the same way, so every line a command writes to standard error parses.

Examples
--------
>>> import json
>>> record = logging.LogRecord("hap.router", logging.WARNING, __file__, 1, "slow: %d ms", (12,), None)
>>> line = json.loads(json_formatter().format(record))
>>> line["level"], line["logger"], line["message"], sorted(line)
('WARNING', 'hap.router', 'slow: 12 ms', ['level', 'logger', 'message', 'time'])
>>> text_formatter().format(record).split(" ", 2)[2]
'WARNING hap.router slow: 12 ms'
>>> dict_config("info", "json")["root"]
{'level': 'INFO', 'handlers': ['stderr']}
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

#: the formats a command can log in
FORMATS = ("text", "json")
#: the levels a command can log at, least first
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: python-json-logger's field names, renamed to the ones the JSON lines carry
JSON_FIELDS = {"levelname": "level", "name": "logger", "exc_info": "exception"}


class LoggingSettingError(ValueError):
    """A log level or format that is not one of :data:`LEVELS` / :data:`FORMATS`.

    ``field`` is the :class:`~deploy.settings.Settings` field that held it (``log_level`` or ``log_format``).
    """

    def __init__(self, field: str, value: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{value!r} is not one of {', '.join(allowed)}")
        self.field, self.value, self.allowed = field, value, allowed


def json_formatter() -> logging.Formatter:
    """The ``json`` format's formatter: one JSON object per record, on one line."""
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time", rename_fields=JSON_FIELDS)


def text_formatter() -> logging.Formatter:
    """The ``text`` format's formatter."""
    return logging.Formatter(TEXT_FORMAT)


def checked(level: str, fmt: str) -> tuple[str, str]:
    """``(LEVEL, format)`` normalised; :class:`LoggingSettingError` names the one that is not known.

    >>> checked("debug", "JSON")
    ('DEBUG', 'json')
    >>> checked("loud", "text")
    Traceback (most recent call last):
    ...
    deploy.logging_config.LoggingSettingError: 'loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL
    """
    if level.upper() not in LEVELS:
        raise LoggingSettingError("log_level", level, LEVELS)
    if fmt.lower() not in FORMATS:
        raise LoggingSettingError("log_format", fmt, FORMATS)
    return level.upper(), fmt.lower()


def dict_config(level: str, fmt: str, stream: TextIO | None = None) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` schema of ``level`` and ``fmt``: one handler on the
    root logger, writing to ``stream`` (default: standard error); loggers already made keep working."""
    level, fmt = checked(level, fmt)
    factory = json_formatter if fmt == "json" else text_formatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: {"()": factory}},
        # the process's own standard error: Faust points sys.stderr at a logger of its own, and a test at its capture
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": fmt,
                                "stream": sys.__stderr__ if stream is None else stream}},
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Log at ``level`` in ``fmt`` from now on, Python's warnings included; in ``json``, an
    uncaught exception (any thread's) is logged as one CRITICAL record instead of a bare traceback."""
    logging.config.dictConfig(dict_config(level, fmt, stream))
    logging.captureWarnings(True)
    if checked(level, fmt)[1] == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda a: _log_uncaught(a.exc_type, a.exc_value, a.exc_traceback)


def _log_uncaught(kind: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> None:
    if issubclass(kind, SystemExit):  # a thread's exit, as the default hook
        return
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc or kind(), tb)
        return
    logging.getLogger("hap").critical("uncaught %s", kind.__name__, exc_info=(kind, exc or kind(), tb))


def as_log_line(message: str, logger: str = "hap", level: int = logging.INFO) -> str:
    """``message`` as the root logger's handler would write it when it writes JSON (a status or
    progress line printed to standard error then parses like every other); else ``message`` unchanged."""
    handler = _json_handler()
    if handler is None or handler.formatter is None:
        return message
    return handler.formatter.format(logging.LogRecord(logger, level, "", 0, message, None, None))


def _json_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)), None)
