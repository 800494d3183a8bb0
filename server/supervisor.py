"""``fashion-serve --workers N``: one supervisor process and N worker processes behind one port.

One Python process serves at most what its one event-loop thread can handle (about
1000 / f requests per second: docs/PERFORMANCE.md). Workers are whole servers
(:mod:`server.worker`) sharing the gRPC and REST ports with SO_REUSEPORT: the kernel
spreads connections over them. The supervisor imports neither grpc nor onnxruntime
and owns everything that must be one thing for the whole server:

* **the ports:** it binds them first (SO_REUSEPORT, not listening: port 0 becomes a
  real port, and the ports stay this server's while a worker restarts), claims them
  against a second server on the same port (:mod:`server.held_ports`), then starts
  the workers on them;
* **the lifecycle:** it restarts a worker that dies (with back-off, counted in
  ``fashion_worker_restarts_total``), kills and restarts one whose event loop stops
  answering (``--worker-timeout-s``, :mod:`server.watchdog`), forwards SIGTERM and
  exits 0 only when every worker has drained and exited 0;
* **what is served:** every model change — the first load, each poll (every
  ``--poll-interval-s`` and on SIGHUP), each load or unload that reached one worker —
  is prepared in every worker, compared, and committed only when every worker would
  serve exactly the same versions (with the same files, labels and defaults);
  otherwise it is aborted everywhere and the reason logged or returned. A restarted
  worker first serves exactly what its peers serve. So workers never disagree;
* **readiness:** ready (health, ``ServerReady``, ``/v2/health/ready``,
  ``fashion_server_ready``) only while every worker is ready; a first deploy without
  a model waits in every worker (looking again on SIGHUP, in either control mode);
* **one view:** ``/metrics`` is the workers' series summed (:mod:`server.metrics_merge`)
  plus each process's ``process_*`` series (label ``process``), and Triton's
  ``ModelStatistics`` are summed over the workers whichever one is asked (what a dead
  worker had counted stays in both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from server.cgroup import available_cpus
from server.channel import (
    FD_VARIABLE,
    INDEX_VARIABLE,
    PORTS_VARIABLE,
    Channel,
    ChannelClosed,
    Message,
)
from server.config import POLL, Settings
from server.coordinator import ASK_TIMEOUT_S, Coordinator, WorkerHandle, describe
from server.errors import ConfigError, ServingError
from server.held_ports import HeldPorts
from server.http_limits import limits_of
from server.main import READY_LINE, WAITING_LINE
from server.orphans import adopt_orphans, reap_until
from server.supervisor_metrics import SupervisorMetrics
from server.watchdog import Watchdog

logger = logging.getLogger("server.supervisor")
# How a process ends when a stop signal finds no handler (subprocess's -N): see shutdown.
STOP_SIGNAL_CODES = frozenset({-signal.SIGTERM, -signal.SIGINT})

# A worker that opens its ports slower than this at start-up is a failed start.
LISTEN_TIMEOUT_S = 120.0
# Restart back-off: doubles from the first to the last, back to the first once a
# worker has run this long.
BACKOFF_S = (0.5, 30.0)
STABLE_S = 60.0
# The restart reason of a restarted worker that the supervisor stopped again because it could
# not join its peers (it serves nothing the others serve, or did not open its ports in time).
RETIRED = "did not come back"
# How often ended orphans (a lost worker's REST parse processes) are waited for.
REAP_EVERY_S = 1.0


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.count = settings.worker_count
        self.workers = [WorkerHandle(i) for i in range(self.count)]
        # --threads 0: the CPUs this process may use, shared out among the workers (N
        # workers with all of them each would oversubscribe the CPUs N times).
        share = max(1, available_cpus() // self.count)
        self._threads = ["--threads", str(share)] if settings.threads == 0 else []
        self.ports: tuple[int, int] = (0, -1)
        self.metrics_port = 0
        self._held = HeldPorts(settings.host)
        # Resolved once: the default "models" is relative to where the server was started.
        self._where = os.path.abspath(settings.model_repo)
        self.coordinator = Coordinator(self.workers)
        self._opened = False  # every worker listened: from here on a lost one is restarted
        self._started = False  # the workers were told to serve
        # While every worker waits for a first model: what they refuse calls with (a worker
        # restarted meanwhile is told to wait too). None before that, and once started.
        self._waiting: str | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._poll = asyncio.Event()
        self._cluster_ready = False
        self._readiness_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spawning = 0  # workers being started: the orphan reaper waits meanwhile
        self._none_spawning = asyncio.Event()  # set while _spawning is 0
        self._none_spawning.set()
        self.metrics = SupervisorMetrics(self.coordinator)
        self.watchdog = Watchdog(self.coordinator, settings.worker_timeout_s)

    # -- the whole run ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            self._hold_ports()
            await self.metrics.open(
                self.settings.host, self.settings.metrics_port, limits_of(self.settings)
            )
            self.metrics_port = self.metrics.port
        except ConfigError as exc:
            logger.error("cannot start: %s", exc)
            self._release_ports()
            return 1
        # What a lost worker leaves (its REST parse worker's processes) comes to us, here as
        # in a container where we are PID 1, and is waited for (server/orphans.py).
        adopt_orphans()
        self._spawn_task(reap_until(self._stop, self._worker_pids, REAP_EVERY_S), "orphan-reaper")
        for worker in self.workers:
            await self._spawn(worker)
        # Watching from the start: a first deploy may wait hours for its model.
        self._spawn_task(self.watchdog.run(self._stop), "watchdog")
        code = await self._start()
        if code is None:
            self._spawn_task(self._watch(), "model-watcher")
            self._spawn_task(self.metrics.sample(self._stop), "metrics-sampler")
            await self._stop.wait()
            code = 0
        return await self._shutdown(code)

    def _worker_pids(self) -> set[int] | None:
        """The workers asyncio waits for: never reaped as orphans. None while one is being
        started (its pid is not known until the spawn returns)."""
        if self._spawning:
            return None
        return {w.pid for w in self.workers if w.pid is not None}

    async def _start(self) -> int | None:
        """Open every worker, load the models into all of them, then serve. None: serving;
        a number: the exit code of a start that failed (or was stopped)."""
        if await wait_or_stop(self._open_all(), self._stop):
            return 0
        for worker in self.workers:
            process = worker.process
            if worker.listening.is_set() and process and process.returncode is not None:
                worker.failed = f"exited ({process.returncode}) after it opened its ports"
        failed = [w for w in self.workers if not w.listening.is_set() or w.failed]
        if failed:
            logger.error("cannot start: worker %d: %s", failed[0].index, failed[0].failed)
            return 1
        for worker in self.workers:
            worker.joined = True
        self._opened = True  # no await since the check above: a worker lost now is restarted
        lines = {"port": self.ports[0], "metrics": self.metrics_port, "http": max(self.ports[1], 0)}
        while True:
            try:
                if await self._first_look():
                    break
            except ServingError as exc:
                logger.error("cannot start: %s", exc)
                return 1
            if not self.settings.wait_for_model:
                logger.error("cannot start: %s", await self._nothing_to_serve())
                return 1
            if self._waiting is None:
                where = self._where
                refusal = f"waiting for a model in {where}; retry shortly"
                self._waiting = refusal
                await self.coordinator.broadcast("wait", refusal=refusal)
                print(WAITING_LINE.format(**lines), flush=True)
                logger.warning("waiting for a model in %s (in every worker)", where)
            if await self._next_look():
                return 0
        self._started, self._waiting = True, None
        await self.coordinator.broadcast("start")
        await self._update_readiness()
        while not self._cluster_ready:
            self._readiness_changed.clear()
            if await wait_or_stop(self._readiness_changed.wait(), self._stop):
                return 0
        print(READY_LINE.format(**lines), flush=True)
        served = describe(self.coordinator.committed)
        logger.info("ready: %d workers serving %s", self.count, served)
        return None

    async def _open_all(self) -> None:
        await asyncio.gather(*(self._listening(w) for w in self.workers))

    async def _first_look(self) -> bool:
        """Apply the start-up models in every worker; True once what start-up needs is served."""
        s = self.settings
        try:
            if s.model_control_mode == POLL:
                await self.coordinator.apply({"operation": "poll"})
                return bool(self.coordinator.committed)
            wanted = s.startup_models
            names = tuple(self._models_on_disk()) if wanted == ("*",) else wanted
            for name in names:
                if name not in self.coordinator.committed:
                    try:
                        await self.coordinator.apply({"operation": "load", "name": name})
                    except ServingError as exc:
                        logger.error("cannot load %s at start-up: %s", name, exc)
            if wanted == ("*",):
                return bool(self.coordinator.committed) or not names
            return all(name in self.coordinator.committed for name in names)
        except ServingError as exc:
            if not s.wait_for_model:
                raise
            logger.error("looking for models failed: %s", exc)
            return False

    def _models_on_disk(self) -> list[str]:
        from server.repository import scan_models  # light: no grpc, no onnxruntime

        try:
            return scan_models(self.settings.model_repo).models
        except ServingError:
            return []

    async def _nothing_to_serve(self) -> str:
        with contextlib.suppress(ServingError, ChannelClosed):
            reply = await self.coordinator.first_worker().request("state", timeout_s=ASK_TIMEOUT_S)
            problems = reply.get("problems") or {}
            if problems:
                listed = "; ".join(f"{name}: {p}" for name, p in sorted(problems.items()))
                return f"no valid model version in {self.settings.model_repo}: {listed}"
        return (
            f"no model version in {self._where}; run "
            "fashion-train first, point --model-repo (FASHION_MODEL_REPO) at a repository, "
            "or start with --wait-for-model"
        )

    async def _next_look(self) -> bool:
        """Wait for the next poll (interval or SIGHUP); True when asked to stop instead."""
        timeout = self.settings.poll_interval_s or None
        stopped = await wait_or_stop(self._poll.wait(), self._stop, timeout)
        self._poll.clear()
        return stopped

    def _on_sighup(self) -> None:
        # Explicit mode too looks again while it waits for its start-up models, as one
        # process does (App.request_reload); once serving, only the API changes them.
        if self.settings.model_control_mode == POLL or not self._started:
            self._poll.set()
        else:
            logger.info(
                "--model-control-mode explicit: SIGHUP changes nothing; load and unload "
                "models through the API"
            )

    async def _watch(self) -> None:
        """Poll mode: apply the repository in every worker at each interval and on SIGHUP."""
        if self.settings.model_control_mode != POLL:
            return
        while not await self._next_look():
            try:
                await self.coordinator.apply({"operation": "poll"})
            except ServingError as exc:
                logger.error("polling the repository changed nothing: %s", exc)

    # -- what workers ask -------------------------------------------------------------------

    async def _handle(self, worker: WorkerHandle, message: Message) -> Message | None:
        op = message["op"]
        if op == "listening":
            worker.heard_at = time.monotonic()  # the watchdog's clock starts here
            worker.listening.set()
        elif op == "failed":
            worker.failed = str(message.get("message", "failed to start"))
            worker.listening.set()
        elif op == "phase":
            worker.phase = str(message["phase"])
            await self._update_readiness()
        elif op == "control":
            operation = {"operation": message["action"], "name": message["name"]}
            if message.get("config") is not None:
                operation["config"] = message["config"]
            changes = await self.coordinator.apply(operation)
            change = changes[0] if changes else {"loaded": [], "unloaded": []}
            return {"loaded": change["loaded"], "unloaded": change["unloaded"]}
        elif op == "statistics":
            return {"statistics": await self.coordinator.statistics(message["versions"])}
        return None

    # -- readiness --------------------------------------------------------------------------

    async def _update_readiness(self) -> None:
        ready = (
            self._started
            and not self._stopping
            and all(w.joined and w.phase == "ready" for w in self.workers)
        )
        counts: dict[str, int] = {}
        for worker in self.workers:
            state = worker.phase if worker.joined else "restarting"
            counts[state] = counts.get(state, 0) + 1
        self.metrics.workers.clear()
        for state, count in counts.items():
            self.metrics.workers.labels(state).set(count)
        if ready != self._cluster_ready:
            self._cluster_ready = ready
            self.metrics.ready.set(1 if ready else 0)
            await self.coordinator.broadcast("peers", ready=ready)
            self._readiness_changed.set()

    # -- workers: start, watch, restart -----------------------------------------------------

    async def _spawn(self, worker: WorkerHandle) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[FD_VARIABLE] = str(theirs.fileno())
        env[INDEX_VARIABLE] = str(worker.index)
        env[PORTS_VARIABLE] = f"{self.ports[0]},{self.ports[1]}"
        worker.listening = asyncio.Event()
        worker.failed, worker.phase, worker.joined = "", "starting", False
        worker.stopped_for = ""
        self._spawning += 1
        self._none_spawning.clear()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.worker",
                *self.argv,
                *self._threads,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            self._spawning -= 1
            if not self._spawning:
                self._none_spawning.set()
        theirs.close()
        worker.started_at = time.monotonic()

        async def handle(message: Message) -> Message | None:
            return await self._handle(worker, message)

        worker.channel = await Channel.over_socket(ours, handle)
        self._spawn_task(worker.channel.serve(), f"worker-{worker.index}-channel")
        self._spawn_task(self._reap(worker, worker.process), f"worker-{worker.index}-reaper")

    async def _listening(self, worker: WorkerHandle) -> None:
        process = worker.process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        listening = asyncio.ensure_future(worker.listening.wait())
        done, _ = await asyncio.wait(
            {exited, listening}, timeout=LISTEN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (exited, listening):
            task.cancel()
        if not worker.listening.is_set():
            worker.failed = worker.failed or (
                f"exited with code {process.returncode}"
                if exited in done
                else f"did not open its ports within {LISTEN_TIMEOUT_S:g} s"
            )

    async def _reap(self, worker: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if worker.process is not process:
            return
        was_joined = worker.joined
        worker.joined = False
        if worker.channel is not None:
            await worker.channel.close()
        # Stopping (shutdown sets _stop too), or still opening: _start fails on it, exit 1.
        if self._stop.is_set() or not self._opened:
            return
        self.coordinator.carry(worker)  # what it counted stays counted
        if worker.stopped_for:
            reason = worker.stopped_for
        elif code < 0:
            reason = f"signal {signal.Signals(-code).name}"
        else:
            reason = f"exit code {code}"
        self.metrics.restarts.labels(reason).inc()
        if reason != RETIRED:  # _restart said why it did not come back, and tries again
            logger.error(
                "worker %d (pid %d) died: %s; restarting it", worker.index, process.pid, reason
            )
        await self._update_readiness()
        if was_joined:
            self._spawn_task(self._restart(worker), f"worker-{worker.index}-restart")

    async def _restart(self, worker: WorkerHandle) -> None:
        ran = time.monotonic() - worker.started_at
        worker.restarts = 0 if ran > STABLE_S else worker.restarts + 1
        delay = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** max(0, worker.restarts - 1))
        while not self._stop.is_set():
            if await wait_or_stop(asyncio.sleep(delay), self._stop):
                return
            await self._spawn(worker)
            await self._listening(worker)
            if worker.listening.is_set() and not worker.failed and await self._join(worker):
                return
            logger.error("worker %d did not come back (%s); retrying", worker.index, worker.failed)
            if worker.process is not None and worker.process.returncode is None:
                worker.stopped_for = RETIRED
                worker.process.terminate()
                await worker.process.wait()
            delay = min(BACKOFF_S[1], delay * 2)

    async def _join(self, worker: WorkerHandle) -> bool:
        """A restarted worker serves exactly what its peers serve, then joins them: serving,
        or waiting for a first model with them."""
        async with self.coordinator.lock:
            try:
                sync = {
                    "operation": "sync",
                    "state": self.coordinator.committed,
                    "records": await self._peer_records(worker),
                }
                await self.coordinator.apply_to(sync, [worker])
            except ServingError as exc:
                worker.failed = f"cannot serve what the other workers serve: {exc}"
                return False
            try:
                reply = await self.coordinator.ask(worker, "state")
                if reply["state"] != self.coordinator.committed:
                    worker.failed = "its models differ from the other workers' after the sync"
                    return False
                worker.joined = True
                await self.coordinator.ask(worker, "peers", ready=False)
                if self._started:
                    await self.coordinator.ask(worker, "start")
                elif self._waiting is not None:  # the others wait for a first model
                    await self.coordinator.ask(worker, "wait", refusal=self._waiting)
                # else: _start is still looking; what it tells every worker next reaches it
            except ChannelClosed:  # it died (or was killed) while joining: try again
                worker.joined = False
                worker.failed = "it went away while joining"
                return False
        logger.info("worker %d (pid %s) is back", worker.index, worker.pid)
        return True

    async def _peer_records(self, joining: WorkerHandle) -> dict[str, Any]:
        """What a serving peer remembers of the repository (the versions it refused, and
        why), for ``joining``: so that its index and its errors say what its peers' say.
        Empty when no peer answers (the first poll or load after it joins tells it again)."""
        for peer in self.workers:
            if peer is joining or not peer.joined:
                continue
            with contextlib.suppress(ServingError, ChannelClosed, TimeoutError):
                reply = await self.coordinator.ask(peer, "records", timeout_s=ASK_TIMEOUT_S)
                return dict(reply["records"])
        return {}

    # -- ports, shutdown ----------------------------------------------------------------------

    def _hold_ports(self) -> None:
        """Bind and claim the gRPC and REST ports for the workers (server/held_ports.py)."""
        s = self.settings
        grpc_port = self._hold(s.port, "--port")
        http_port = self._hold(s.http_port, "--http-port") if s.http_port >= 0 else -1
        self.ports = (grpc_port, http_port)

    def _hold(self, port: int, flag: str) -> int:
        try:
            return self._held.hold(port)
        except OSError as exc:
            host = self.settings.host
            raise ConfigError(f"{flag}: cannot listen on {host}:{port} ({exc})") from None

    def _release_ports(self) -> None:
        self._held.release()

    async def _shutdown(self, code: int) -> int:
        """SIGTERM to every worker; each drains as one server does; 0 only if all exit 0."""
        self._stopping = True
        self._stop.set()  # (already, unless the start failed): no restart, no watchdog now
        logger.info(
            "shutdown: draining %d workers for up to %.1f s", self.count, self.settings.grace_s
        )
        # A worker being started now (a restart under way) is one of them: its process
        # exists once the start returns, and it is signalled and waited for like the others
        # (taken before, the list missed it: no SIGTERM, not waited for). No start begins
        # after this: _stop is set.
        await self._none_spawning.wait()
        processes = [w.process for w in self.workers if w.process is not None]
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        limit = self.settings.grace_s + 10.0
        try:
            async with asyncio.timeout(limit):
                codes = [await process.wait() for process in processes]
        except TimeoutError:
            logger.error("workers still running %.0f s after SIGTERM: killing them", limit)
            for process in processes:
                if process.returncode is None:
                    process.kill()
            codes = [await process.wait() for process in processes]
            code = code or 1
        # A worker ended by the stop signal itself had not installed its handler yet: it was
        # still importing, before it listened on anything (it installs the handler first), so
        # it served nothing and lost nothing. SIGINT too: Ctrl-C reaches the whole group.
        unstarted = [c for c in codes if c in STOP_SIGNAL_CODES]
        if unstarted:
            logger.info("%d worker(s) stopped while still starting", len(unstarted))
        if any(c != 0 and c not in STOP_SIGNAL_CODES for c in codes):
            logger.error("worker exit codes: %s", codes)
            code = code or 1
        for task in list(self._tasks):
            task.cancel()
        await self.metrics.close()
        self._release_ports()
        logger.info("stopped")
        return code

    def _spawn_task(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def wait_or_stop(
    waiting: Awaitable[Any], stop: asyncio.Event, timeout_s: float | None = None
) -> bool:
    """Wait for ``waiting``, ``stop`` or ``timeout_s``, whichever comes first; True when
    ``stop`` is set. Nothing is left waiting, however the wait ends (cancelled too): a
    task left on an Event stays in its waiters for good, two per poll interval here
    once (~31.6 MiB a day at ``--poll-interval-s 5``)."""
    task = asyncio.ensure_future(waiting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stopped.cancel()
    return stop.is_set()


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """``fashion-serve --workers N`` (N > 1): run the supervisor until it stops."""
    return asyncio.run(Supervisor(settings, argv).run())
