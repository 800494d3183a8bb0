"""Log lines (server.logs): text and JSON, the request id on every line about a request,
nothing a client sends can break a line."""

from __future__ import annotations

import contextvars
import functools
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from server.logs import (
    ACCESS_LOGGER,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    escape_text,
    formatter,
    text_value,
)
from server.request_context import begin


def in_fresh_context(test):
    """Run a test that starts requests in a context of its own: no id leaks to other tests."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return contextvars.Context().run(test, *args, **kwargs)

    return run


TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


@pytest.fixture
def logged(request) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the server's formatter (``request.param``) and filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(request.param))
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger(f"tests.logs.{request.param}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, stream
    log.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("logged", ["json"], indirect=True)
@in_fresh_context
def test_json_lines_parse_and_carry_the_current_request_id(logged) -> None:
    log, stream = logged
    log.info("before any request")
    context = begin("ModelInfer", "req-1")
    log.warning("about %s", "it")
    context.id = "the-oip-id"  # the protocol's id, learnt later, is the one logged from then on
    log.error("still about it")
    documents = [json.loads(line) for line in lines(stream)]
    assert "request_id" not in documents[0]
    assert documents[1]["request_id"] == "req-1" and documents[1]["message"] == "about it"
    assert documents[2]["request_id"] == "the-oip-id"
    assert {d["level"] for d in documents} == {"INFO", "WARNING", "ERROR"}
    assert all(d["logger"] == log.name and d["time"].endswith("Z") for d in documents)


@pytest.mark.parametrize("logged", ["json"], indirect=True)
@in_fresh_context
def test_json_fields_an_explicit_id_and_a_traceback_stay_one_parseable_line(logged) -> None:
    log, stream = logged
    begin("Predict", "current-one")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception(
            "failed", extra={"request_id": "named", "fields": {"images": 3, "message": "x"}}
        )
    (line,) = lines(stream)
    document = json.loads(line)
    assert document["request_id"] == "named"  # the record's own id wins
    assert document["images"] == 3
    assert document["message"] == "failed"  # a field never overwrites the line's own keys
    assert "RuntimeError: boom\nsecond line" in document["exception"]


@pytest.mark.parametrize("logged", ["text"], indirect=True)
@in_fresh_context
def test_text_lines_escape_control_characters_and_quote_odd_values(logged) -> None:
    log, stream = logged
    begin("ModelInfer", "id with spaces")
    log.info("client said %s", "a\nforged line\x1b[31m")
    log.info("request", extra={"fields": {"method": "ModelInfer", "model": "", "n": 2}})
    first, second = lines(stream)
    level, name, message = TEXT_LINE.match(first).groups()
    assert (level, name) == ("INFO", log.name)
    assert message == 'client said a\\nforged line\\x1b[31m request_id="id with spaces"'
    assert TEXT_LINE.match(second).group(3) == (
        'request method=ModelInfer model="" n=2 request_id="id with spaces"'
    )


def test_escaping_keeps_printable_text_and_escapes_every_line_break() -> None:
    assert escape_text("plain text, é and ü") == "plain text, é and ü"
    escaped = escape_text("a\r\nb\tc\x00d\x7fe\x85f\u2028g")
    assert escaped == "a\\r\\nb\\tc\\x00d\\x7fe\\x85f\\u2028g"
    assert text_value("abc-1.2") == "abc-1.2"
    assert text_value('a "b"') == '"a \\"b\\""'
    assert text_value("k=v") == '"k=v"'
    assert text_value("é") == '"\\u00e9"'
    assert text_value(0.25) == "0.25"


def test_only_known_formats() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    assert isinstance(formatter("text"), TextFormatter)
    with pytest.raises(ValueError, match="expected one of text, json"):
        formatter("xml")


def test_access_logger_name_is_stable() -> None:
    # Operators route or filter it by name (docs/OPERATIONS.md#logs).
    assert ACCESS_LOGGER == "server.access"


def test_a_workers_lines_name_it_in_both_formats() -> None:
    """--workers: every process writes to the pod's one stderr; each line says which."""
    record = logging.LogRecord("server.manager", logging.INFO, __file__, 1, "serves", None, None)
    text = TextFormatter(worker=3).format(record)
    match = TEXT_LINE.match(text.replace(" worker 3 ", " ", 1))
    assert " worker 3 INFO server.manager: serves" in text and match, text
    assert json.loads(JsonFormatter(worker=3).format(record))["worker"] == 3
    assert "worker" not in json.loads(JsonFormatter().format(record))
    assert " worker " not in TextFormatter().format(record)
