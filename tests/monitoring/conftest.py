"""Same real-server fixtures as the end-to-end tests."""

from tests.e2e.conftest import faults, start_app  # noqa: F401
