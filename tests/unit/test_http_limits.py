"""The HTTP limits' pure parts: settings, the body budget, inflating, the limiter's choice,
the rate-limited log. The behaviour on the wire is tested on a real server in
tests/reliability/test_rest_hostile.py."""

from __future__ import annotations

import logging
import zlib

import pytest

from server.config import load_settings
from server.errors import ConfigError, InvalidInput
from server.http_body import (
    BodyBudget,
    BodyTooLarge,
    Busy,
    Held,
    UnsupportedEncoding,
    content_coding,
    inflate,
)
from server.http_limits import ConnectionLimiter, RateLimitedLog, Slot


def test_http_limits_have_defaults_flags_and_variables() -> None:
    s = load_settings([], {})
    assert (s.http_max_connections, s.http_max_concurrent_requests) == (1000, 256)
    assert s.http_max_body_bytes_in_flight == 256 * 1024 * 1024
    assert (s.http_body_timeout_s, s.http_header_timeout_s) == (30.0, 10.0)
    assert (s.http_keepalive_timeout_s, s.http_tls_handshake_timeout_s) == (60.0, 10.0)
    s = load_settings(
        ["--http-body-timeout-s", "2"],
        {"FASHION_HTTP_MAX_CONNECTIONS": "50", "FASHION_HTTP_MAX_CONCURRENT_REQUESTS": "10"},
    )
    assert (s.http_body_timeout_s, s.http_max_connections) == (2.0, 50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-body-timeout-s", "nan"], "must be a finite number"),
        (["--http-body-timeout-s", "0"], "FASHION_HTTP_BODY_TIMEOUT_S must be >="),
        (["--http-max-connections", "1"], "FASHION_HTTP_MAX_CONNECTIONS must be >="),
        (
            ["--http-max-body-bytes-in-flight", "2000000", "--max-message-bytes", "4000000"],
            "must be at least --max-message-bytes",
        ),
        (
            ["--http-max-connections", "100", "--http-max-concurrent-requests", "100"],
            "a health probe must always find a connection",
        ),
    ],
)
def test_bad_http_limits_are_refused(argv, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(argv, {})


def test_the_budget_is_shared_and_given_back_once() -> None:
    budget = BodyBudget(100)
    first, second = Held(budget), Held(budget)
    first.take(60, "a body")
    with pytest.raises(Busy, match="60 bytes of request bodies are in progress"):
        second.take(50, "another body")
    second.take(40, "a smaller body")
    first.give(10)
    assert budget.held == 90
    first.release()
    first.release()
    second.release()
    assert budget.held == 0


def test_codings_gzip_and_deflate_only() -> None:
    assert content_coding("") is None and content_coding(" Identity ") is None
    assert content_coding("GZIP") == content_coding("x-gzip") == 16 + zlib.MAX_WBITS
    assert content_coding("deflate") == 0
    for other in ("br", "zstd", "compress", "gzip, br"):
        with pytest.raises(UnsupportedEncoding, match="send the body as is, or as gzip, deflate"):
            content_coding(other)


def test_inflate_stops_at_the_limit() -> None:
    data = bytes(range(256)) * 40
    gzip_wbits = 16 + zlib.MAX_WBITS
    assert inflate(zlib.compress(data, wbits=gzip_wbits), gzip_wbits, len(data)) == data
    assert inflate(zlib.compress(data), 0, len(data)) == data  # zlib-wrapped deflate
    assert inflate(zlib.compress(data, wbits=-15), 0, len(data)) == data  # raw deflate
    two = zlib.compress(data[:100], wbits=gzip_wbits) + zlib.compress(data[100:], wbits=gzip_wbits)
    assert inflate(two, gzip_wbits, len(data)) == data  # gzip members, one after another
    bomb = zlib.compress(bytes(10_000_000), wbits=gzip_wbits)
    with pytest.raises(BodyTooLarge, match="more than 1000 bytes once inflated"):
        inflate(bomb, gzip_wbits, 1000)
    with pytest.raises(InvalidInput, match="cannot be read: the compressed data is cut"):
        inflate(zlib.compress(data, wbits=gzip_wbits)[:-20], gzip_wbits, len(data))
    with pytest.raises(InvalidInput, match="cannot be read"):
        inflate(b"not gzip at all", gzip_wbits, 1000)


class FakeSlot(Slot):
    def __init__(
        self, name: str, last_active: float, busy: bool = False, silent: bool = False
    ) -> None:
        self.name, self.last_active, self.busy, self.evicted = name, last_active, busy, False
        self.silent = silent
        self.unread = False  # bytes arrived that were not read yet

    def still_silent(self) -> bool:
        return self.silent and not self.unread

    def evictable(self) -> bool:
        return not self.busy

    def evict(self) -> None:
        self.evicted = True


def test_the_limiter_closes_the_quietest_idle_connection_and_refuses_when_all_are_busy() -> None:
    limiter = ConnectionLimiter(3)
    old_idle, busy, new_idle = FakeSlot("a", 1.0), FakeSlot("b", 0.5, busy=True), FakeSlot("c", 2)
    for slot in (old_idle, busy, new_idle):
        assert limiter.admit(slot)
    assert limiter.admit(FakeSlot("d", 3.0))
    assert old_idle.evicted and not busy.evicted and not new_idle.evicted
    assert len(limiter) == 3 and limiter.evicted == 1
    all_busy = ConnectionLimiter(1)
    assert all_busy.admit(FakeSlot("x", 0.0, busy=True))
    assert not all_busy.admit(FakeSlot("y", 1.0))
    assert all_busy.refused == 1


def test_the_limiter_closes_silent_connections_before_any_that_has_spoken() -> None:
    """A pending TLS handshake that has heard nothing from its client goes first, however
    recent; among silent ones, the oldest (tests/unit/test_http_site.py on the wire)."""
    limiter = ConnectionLimiter(3)
    spoken = FakeSlot("honest, mid-handshake", 1.0)
    old_silent, new_silent = FakeSlot("s1", 2.0, silent=True), FakeSlot("s2", 3.0, silent=True)
    for slot in (spoken, new_silent, old_silent):
        assert limiter.admit(slot)
    assert limiter.admit(FakeSlot("s3", 4.0, silent=True))
    assert old_silent.evicted and not new_silent.evicted and not spoken.evicted
    assert limiter.admit(FakeSlot("s4", 5.0, silent=True))
    assert new_silent.evicted and not spoken.evicted
    # The oldest silent one's ClientHello is in its socket, unread: it is spared and, having
    # spoken, ranked by its last activity (older than the honest one's: it goes next).
    limiter = ConnectionLimiter(2)
    unread, silent = FakeSlot("unread", 1.0, silent=True), FakeSlot("silent", 2.0, silent=True)
    unread.unread = True
    assert limiter.admit(unread) and limiter.admit(silent)
    assert limiter.admit(FakeSlot("s5", 3.0))
    assert silent.evicted and not unread.evicted and not unread.silent
    assert limiter.admit(FakeSlot("s6", 4.0, silent=True))
    assert unread.evicted


def test_a_repeated_warning_is_logged_once_per_interval_with_a_count(caplog) -> None:
    log = RateLimitedLog("bad request from %s", interval_s=10)
    with caplog.at_level(logging.WARNING):
        for t in range(25):
            log.note(float(t), "1.2.3.4")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad request from 1.2.3.4",
        "bad request from 1.2.3.4 (9 more not logged in the last 10 s)",
        "bad request from 1.2.3.4 (9 more not logged in the last 10 s)",
    ]
