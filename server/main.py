"""``fashion-serve``: settings, logging, signals, asyncio.run — nothing else."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from server.app import create_app
from server.config import Settings, load_settings
from server.errors import ConfigError, ServingError

logger = logging.getLogger("server")


async def serve(settings: Settings) -> int:
    app = create_app(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.start()
    except ServingError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    # One line on stdout that scripts (and the tests) can wait for.
    print(f"fashion-serve: serving on port {app.port} metrics {app.metrics_port}", flush=True)
    await stop.wait()
    logger.info("shutdown requested; draining for up to %.1f s", settings.grace_s)
    await app.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"fashion-serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
