"""Log lines on stderr, as text or JSON, each with the id of the request it is about.

* ``text``: ``TIME LEVEL LOGGER: message key=value ... request_id=ID``;
* ``json``: one JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, ``request_id`` when the line is about a request, the record's fields
  (``extra={"fields": {...}}``), and ``exception`` (the traceback) when there is one.

A line written while a request is current (:mod:`server.request_context`) carries its
id; a record may also name its own (``extra={"request_id": ...}``: the access log, whose
lines are written after the request, for a message of a stream). Nothing a client sent
can break a line: JSON escapes it; in text mode control characters are escaped (``\\n``,
``\\x1b``) and a field value with spaces, quotes or ``=`` is quoted.

The access log (``--access-log``) is the logger ``server.access``: one INFO line per
request with method, status, model, version, images, batch, latency and peer
(:meth:`server.dataplane.DataPlane.observe` writes it).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from server.request_context import current

FORMATS = ("text", "json")
ACCESS_LOGGER = "server.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# C0 and C1 control characters, DEL, and the Unicode line separators: escaped in text mode.
_CONTROL = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_QUOTE_IN_TEXT = frozenset(' "=\\')


def escape_text(text: str) -> str:
    """``text`` with its control characters escaped: it stays on one line."""
    return text if text.isprintable() else text.translate(_CONTROL)


def text_value(value: object) -> str:
    """A field value for a text line: as is when it is a plain token, else JSON-quoted."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isascii() and text.isprintable() and not _QUOTE_IN_TEXT & set(text):
        return text
    return json.dumps(text)


class RequestIdFilter(logging.Filter):
    """Gives a record the id of the request current where it was written (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            context = current()
            record.request_id = context.id if context is not None else None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        # A worker's lines say which worker wrote them: its tag after the time.
        tag = "" if worker is None else f"worker {worker} "
        super().__init__(TEXT_FORMAT.replace(" %(levelname)s", f" {tag}%(levelname)s", 1))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        line = super().formatMessage(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {key}={text_value(value)}" for key, value in fields.items())
        request_id = getattr(record, "request_id", None)
        if request_id:
            line += f" request_id={text_value(request_id)}"
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            document["worker"] = self.worker
        request_id = getattr(record, "request_id", None)
        if request_id:
            document["request_id"] = request_id
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                document.setdefault(key, value)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str)


def formatter(log_format: str, worker: int | None = None) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    return JsonFormatter(worker) if log_format == "json" else TextFormatter(worker)


def configure_logging(
    level: str, log_format: str = "text", *, access_log: bool = False, worker: int | None = None
) -> None:
    """Every log line of the process to stderr, in ``log_format``, from ``level`` up.

    The access log is written at INFO whatever ``level`` is: asking for it is asking
    for its lines. Python warnings go through logging too (same format). ``worker``:
    the index of a ``--workers`` process, on each of its lines (text: ``worker N`` after
    the time; json: a ``worker`` field), so the pod's one stderr tells them apart.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, worker))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.captureWarnings(True)
    if access_log:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
