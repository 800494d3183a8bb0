"""One worker of ``fashion-serve --workers N``: a whole server process, driven by the supervisor.

The supervisor (:mod:`server.supervisor`) starts ``python -m server.worker ARGS`` with
the same arguments and environment as itself, the ports it holds for the workers,
and one end of a socket pair (the control channel, :mod:`server.channel`). A worker
serves the gRPC and REST ports beside its peers (SO_REUSEPORT: the kernel spreads
connections over them), with its own event loop, batchers and model sessions, and
does what the supervisor says:

* ``prepare`` / ``commit`` / ``abort``: a model change (a poll, a load or unload, a
  sync to the peers' state), in two steps so that every worker serves the same thing
  (:meth:`server.manager.ModelManager.prepare`);
* ``start`` / ``wait``: ready, or live and waiting for a first model;
* ``peers``: whether every other worker is ready (health reports ready only then);
* ``metrics``, ``local-statistics``: its counts, summed by the supervisor (``metrics``
  with the Triton statistics of every version it serves: a dead worker's are carried).

It asks the supervisor in turn for what needs every worker: a model load or unload
that reached it through the shared port, and Triton's statistics summed over all.
It stops on SIGTERM (draining like a single server) and when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any

from server.channel import (
    FD_VARIABLE,
    INDEX_VARIABLE,
    PORTS_VARIABLE,
    Channel,
    ChannelClosed,
    Message,
)
from server.config import Settings, load_settings
from server.errors import ConfigError, FailedPrecondition, InvalidInput, ModelNotReady, ServingError
from server.logs import configure_logging
from server.main import prepare_memory
from server.plans import Change, Load, Operation, Plan, Poll, Sync, Unload
from server.readiness import Phase
from server.statistics import VersionStatistics, from_dict, to_dict

logger = logging.getLogger("server.worker")


class WorkerLink:
    """The other workers, through the supervisor (the ``peers`` of :class:`server.app.App`)."""

    def __init__(self) -> None:
        self.channel: Channel | None = None

    async def _request(self, op: str, **fields: Any) -> Message:
        assert self.channel is not None, "the channel is set before the ports open"
        try:
            return await self.channel.request(op, **fields)
        except ChannelClosed:
            # The supervisor is gone (this worker stops now): the client is told so, as a
            # stopping server tells it, not INTERNAL with a traceback in the log. A change
            # may or may not have been made in the other workers before it went.
            unsure = "; a model change may or may not have been made" if op == "control" else ""
            raise ModelNotReady(
                "this server is shutting down (its supervisor went away before it answered"
                f"{unsure}); retry on another replica"
            ) from None

    async def statistics(self, versions: list[tuple[str, int]]) -> list[VersionStatistics]:
        reply = await self._request(
            "statistics", versions=[[name, version] for name, version in versions]
        )
        return [from_dict(item) for item in reply["statistics"]]

    async def control(self, action: str, name: str, config_text: str | None) -> Change:
        reply = await self._request("control", action=action, name=name, config=config_text)
        return Change(name, tuple(reply["loaded"]), tuple(reply["unloaded"]))


def operation_of(message: Message) -> Operation:
    kind = message["operation"]
    if kind == "poll":
        return Poll()
    if kind == "load":
        return Load(message["name"], message.get("config"))
    if kind == "unload":
        return Unload(message["name"])
    if kind == "sync":
        return Sync(message["state"], message.get("records") or {})
    raise InvalidInput(f"unknown operation {kind!r}")


class Worker:
    """The command side of a worker: what the supervisor's messages do to its App."""

    def __init__(self, app: Any) -> None:  # server.app.App (imported late: it loads grpc)
        self.app = app
        self._plans: dict[int, Plan] = {}
        self._next_plan = 0
        self._orphaned = False  # the supervisor is gone: no plan will be committed

    async def abandon_plans(self) -> None:
        """The supervisor is gone: nobody will commit or abort what it had prepared here.

        A prepared plan holds the manager's control lock until then, and stopping the
        manager waits for that lock: kept, it made a worker whose supervisor was killed
        mid-change hang in its shutdown for ever (its sessions and REST parse worker with
        it). Every plan held is aborted now, and one still being prepared once it is.
        """
        self._orphaned = True
        plans, self._plans = list(self._plans.values()), {}
        for plan in plans:
            await self.app.manager.abort(plan)

    async def handle(self, message: Message) -> Message | None:
        app, op = self.app, message["op"]
        if op == "prepare":
            plan = await app.manager.prepare(operation_of(message))
            if self._orphaned:
                await app.manager.abort(plan)
                raise FailedPrecondition("the supervisor went away; nothing changed")
            self._next_plan += 1
            self._plans[self._next_plan] = plan
            return {"plan": self._next_plan, "state": plan.state}
        if op == "commit":
            changes = await app.manager.commit(self._plans.pop(message["plan"]))
            return {"changes": [dataclasses.asdict(c) for c in changes]}
        if op == "abort":
            await app.manager.abort(self._plans.pop(message["plan"]))
            return {}
        if op in ("start", "wait") and app.plane.readiness.phase is Phase.STOPPING:
            # Told to serve (or wait) after it began draining: a change the supervisor was
            # still making when SIGTERM or Ctrl-C (the whole process group) reached this
            # worker. It stays stopping; before, this was a RuntimeError and a traceback.
            return {}
        if op == "start":
            await app.plane.start()
            return {}
        if op == "wait":
            await app.plane.wait_for_model(refusal=message["refusal"])
            return {}
        if op == "peers":
            await app.plane.readiness.set_peers_ready(bool(message["ready"]))
            return {}
        if op == "metrics":
            from prometheus_client import generate_latest

            # With its Triton statistics: what the supervisor carries if this worker dies.
            statistics = app.metrics.statistics
            served = [
                (name, int(version))
                for name, entry in app.manager.state().items()
                for version in entry["versions"]
            ]
            return {
                "text": generate_latest(app.registry).decode(),
                "statistics": [to_dict(statistics.of(m, v)) for m, v in served],
            }
        if op == "local-statistics":
            statistics = app.metrics.statistics
            return {"statistics": [to_dict(statistics.of(m, v)) for m, v in message["versions"]]}
        if op == "ping":  # the supervisor's watchdog: this event loop still turns
            return {}
        if op == "state":
            return {"state": app.manager.state(), "problems": app.manager.problems()}
        if op == "records":
            return {"records": app.manager.records()}
        raise InvalidInput(f"unknown control message {op!r}")


async def serve(settings: Settings, sock: socket.socket) -> int:
    from server.app import create_app  # grpc and onnxruntime: after SIGHUP is ignored

    link = WorkerLink()
    app = create_app(settings, peers=link)
    worker = Worker(app)
    channel = await Channel.over_socket(sock, worker.handle)
    link.channel = channel
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report(phase: Any) -> None:
        await channel.notify("phase", phase=phase.value)

    app.plane.readiness.subscribe(report)
    serving = asyncio.create_task(channel.serve(), name="control-channel")
    try:
        await app.open()
    except ServingError as exc:
        logger.error("cannot start: %s", exc)
        await channel.notify("failed", message=str(exc))
        await channel.close()
        return 1
    await channel.notify("listening")

    async def abandon_when_orphaned() -> None:
        # Once the supervisor is gone (now, or while this worker drains after SIGTERM),
        # nothing it had prepared here will be committed: stopping must not wait for it.
        await channel.closed.wait()
        await worker.abandon_plans()

    orphaned = asyncio.create_task(abandon_when_orphaned(), name="supervisor-gone")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({orphaned, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not stop.is_set():
        logger.error("the supervisor is gone: stopping")
        code = 1
    await app.stop()
    await channel.close()
    serving.cancel()
    for task in (orphaned, stopping):
        task.cancel()
    return code


def main() -> int:
    # SIGHUP is the supervisor's (it polls every worker at once); a worker ignores it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    index = os.environ.get(INDEX_VARIABLE, "?")
    try:
        settings = load_settings(sys.argv[1:], warnings=[])
        grpc_port, http_port = (int(p) for p in os.environ[PORTS_VARIABLE].split(","))
        fd = int(os.environ[FD_VARIABLE])
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"fashion-serve worker {index}: {exc}", file=sys.stderr)
        return 2
    settings = dataclasses.replace(
        settings, port=grpc_port, http_port=http_port, metrics_port=-1, workers="1"
    )
    configure_logging(
        settings.log_level,
        settings.log_format,
        access_log=settings.access_log,
        worker=int(index) if index.isdigit() else None,
    )
    prepare_memory(settings)
    sock = socket.socket(fileno=fd)
    try:
        return asyncio.run(serve(settings, sock))
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
