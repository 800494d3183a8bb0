"""The gRPC and REST ports of ``fashion-serve --workers N``: held by the supervisor for its
workers, and for no other server.

The workers listen with SO_REUSEPORT, so that the kernel spreads connections over them;
the supervisor binds each port first (SO_REUSEPORT, never listening: port 0 becomes a
real port, and the port stays the server's while a worker restarts). But any process of
the same user may join a SO_REUSEPORT port: a second ``--workers`` server on the same port
used to start without a word, and the kernel split new connections between two servers
(one process binds without SO_REUSEPORT, and a second one fails to start).

No socket can hold such a port for one server alone: one bound with SO_REUSEADDR and not
listening (what the workers need beside them) lets in anything else bound that way, and
one without it would shut out the workers too. So, before any worker starts:

* a **claim**: an abstract Unix socket named after the port, bound without sharing. Its
  namespace is the network namespace, the ports' own, and the kernel releases it when
  the supervisor ends, however it ends (no lock file left behind). A second supervisor
  on the port fails to claim it even while the first has no worker listening (starting,
  or every worker restarting). One port number per host (network namespace), whatever
  the ``--host``: two addresses of one port would be checked address by address, and a
  wildcard one conflicts with all of them.
* a **probe**: a bind without SO_REUSEPORT fails where anything listens on the port, so
  another program's SO_REUSEPORT listeners, or the workers of a supervisor killed
  outright (still draining), are found too.

What is left: a program that is not a ``fashion-serve --workers`` supervisor can still
take the port while none of the workers listens (with SO_REUSEPORT it joins them; without
it, the workers cannot listen: the start fails, or a restarted worker "did not come back").
"""

from __future__ import annotations

import errno
import socket

# The claim's name in the abstract namespace (a leading NUL: no file, gone with the process).
CLAIM_NAME = "\0fashion-serve/workers/tcp-port/{port}"


class HeldPorts:
    """Ports bound (SO_REUSEPORT, never listening) and claimed for this server's workers."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._sockets: list[socket.socket] = []

    def hold(self, port: int) -> int:
        """Bind and claim ``port`` (0: any free port) on the host; the port bound.

        Raises OSError when the port is not this server's to hold (EADDRINUSE when another
        server has it)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        holder = self._keep(socket.socket(family, kind, proto))
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(address)
        bound = int(holder.getsockname()[1])
        self._claim(bound)
        # After the holder: the probe shares the port with it (both SO_REUSEADDR, neither
        # listening), so only a listener elsewhere fails it.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], bound, *address[2:]))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise OSError(exc.errno, f"{exc.strerror}: another server listens on it") from None
        return bound

    def _claim(self, port: int) -> None:
        claim = self._keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            claim.bind(CLAIM_NAME.format(port=port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                exc.errno,
                f"{exc.strerror}: another fashion-serve --workers server holds port {port}",
            ) from None

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)  # closed by release(), even if what follows fails
        return sock

    def release(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
