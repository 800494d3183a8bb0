"""--http-port / FASHION_HTTP_PORT: Triton's and KServe's 8000 by default, 0 = any, -1 = off."""

from __future__ import annotations

import pytest

from server.config import load_settings
from server.errors import ConfigError


def test_http_port_default_flag_and_environment() -> None:
    assert load_settings([], {}).http_port == 8000
    assert load_settings([], {"FASHION_HTTP_PORT": "-1"}).http_port == -1
    assert load_settings(["--http-port", "0"], {"FASHION_HTTP_PORT": "9"}).http_port == 0


@pytest.mark.parametrize("value", ["-2", "65536", "http"])
def test_http_port_out_of_range_is_refused_naming_flag_and_variable(value) -> None:
    with pytest.raises(ConfigError, match="--http-port / FASHION_HTTP_PORT"):
        load_settings(["--http-port", value], {})
