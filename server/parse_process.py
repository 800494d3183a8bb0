"""``python -m server.parse_process PARENT``: the REST parse worker, a process of its own.

Started by :class:`server.rest_worker.ParseWorker` (one per server process, with the
first large JSON body). It reads one framed request at a time from stdin (an 8-byte
length, then the pickled ``(body, header_length, limits)``), runs
:func:`server.rest_codec.parse_and_decode`, and writes one framed answer to stdout: the
pickled ``(True, InferBody)``, or ``(False, exception)`` for a body that cannot be read.
It exits when its stdin closes (the server stopped it) and, through
:func:`server.orphans.die_with`, when the server process that started it ends, however
that ends. Light: numpy and orjson, no onnxruntime, grpc or multiprocessing (whose pool
needed a resource tracker process and named semaphores beside it).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import BinaryIO

# Every frame: its length, then that many bytes.
FRAME = struct.Struct("<Q")


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's bytes; None at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer every framed request, in order, until ``requests`` ends."""
    from server.rest_codec import detached, parse_and_decode

    while (frame := read_frame(requests)) is not None:
        body, header_length, limits = pickle.loads(frame)
        del frame
        outcome: tuple[bool, object]
        try:
            outcome = (True, parse_and_decode(body, header_length, **limits))
        except Exception as exc:  # raised again where the server awaits it
            outcome = (False, detached(exc))  # kept until the next body: not holding this one
        del body
        write_frame(answers, pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
        del outcome


def main() -> int:
    from server.orphans import die_with

    die_with(int(sys.argv[1]))
    # It ends when its input does (the server closes it after the body in progress) or with
    # its parent: Ctrl-C or a service manager signalling the whole process group must not
    # cut the body the draining server is waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdout carries frames only: whatever else would print there goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
