"""Same real-server fixtures as the end-to-end tests."""

from tests.e2e.conftest import app, channel, faults, start_app, stub, test_set  # noqa: F401
