"""``fashion-serve``: settings, logging, signals, asyncio.run — nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

# Only light imports here: the heavy ones (grpc, onnxruntime) wait until SIGHUP is ignored.
from server.config import Settings, load_settings
from server.errors import ConfigError, ServingError
from server.logs import configure_logging
from server.memory import keep_large_blocks_unmapped, start_trimming

logger = logging.getLogger("server")
# Printed on stdout when the server is ready (scripts and the tests wait for it), and
# with --wait-for-model, earlier, when it is live and waiting for a first version.
# Words after "port": "N metrics M http H" (0 = that port is off).
READY_LINE = "fashion-serve: serving on port {port} metrics {metrics} http {http}"
WAITING_LINE = "fashion-serve: waiting for a model on port {port} metrics {metrics} http {http}"


async def serve(settings: Settings) -> int:
    from server.app import create_app  # imported by main(), before the loop starts

    app = create_app(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.open()
    except ServingError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    lines = {"port": app.port, "metrics": app.metrics_port, "http": app.http_port}
    if settings.wait_for_model:
        print(WAITING_LINE.format(**lines), flush=True)
    # Loading (or waiting for a first version) races SIGTERM: a pod deleted while it
    # waits for the training Job must stop at once, not after a model shows up.
    loading = asyncio.create_task(app.load(), name="load")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        error = loading.exception()
        if error is not None:
            stopping.cancel()
            await app.stop(grace_s=0)
            if not isinstance(error, ServingError):
                raise error
            logger.error("cannot start: %s", error)
            return 1
        # One line on stdout that scripts (and the tests) can wait for.
        print(READY_LINE.format(**lines), flush=True)
        await stopping
    else:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
    logger.info("shutdown requested; draining for up to %.1f s", settings.grace_s)
    await app.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Until the loop's handler is installed, SIGHUP ("look for a new model") would kill
    # the process (exit 129): a hook that HUPs every replica can hit one that is starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    warnings: list[str] = []
    try:
        settings = load_settings(argv, warnings=warnings)
    except ConfigError as exc:
        print(f"fashion-serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    for warning in warnings:
        logger.warning("%s", warning)
    if settings.worker_count > 1:
        # The supervisor imports neither grpc nor onnxruntime: the workers do.
        from server.supervisor import supervise

        return supervise(settings, list(sys.argv[1:] if argv is None else argv))
    prepare_memory(settings)
    # grpc and onnxruntime (~1 s of imports) only now that SIGHUP is ignored.
    import server.app  # noqa: F401

    try:
        return asyncio.run(serve(settings))
    finally:
        # Closing the loop restored SIGHUP's default (terminate): stay deaf while exiting.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def prepare_memory(settings: Settings) -> None:
    """Before any large allocation: freed message buffers go back to the kernel."""
    keep_large_blocks_unmapped()
    start_trimming(settings.memory_trim_interval_s)


def cli() -> None:
    """The ``fashion-serve`` command: :func:`main`, then exit without the interpreter's teardown.

    Once ``main`` has returned everything is stopped and drained, but CPython's
    finalization still collects and frees every object one by one, seconds after
    hours of traffic (measured: docs/RELIABILITY.md, finding 11). The kernel frees the
    memory of an exiting process at once; only the buffered output must be flushed.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
