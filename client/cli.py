"""``fashion-predict``: classify image files, or evaluate the test set, through a server."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client.predictor import PredictClient, PredictError, TlsConfig
from client.reflection import ReflectionError, call_json, list_services
from client.testset import DataSetError, load_test_split
from server._proto.fashion.v1 import prediction_pb2 as pb
from server.contract import IMAGE_SHAPE, MAX_ENCODED_BYTES, NUM_CLASSES

# Well under the server's default --max-images-per-request (256).
DEFAULT_BATCH_SIZE = 64
# What a request holds beside its files' bytes: each image's two field tags and lengths
# (under 16 bytes), and top_k, model and label (the reserve; names are short).
_IMAGE_OVERHEAD_BYTES = 16
_REQUEST_RESERVE_BYTES = 4096
# How the server begins a message about one image of the request (server/codec.py): only
# those are worth resending one file at a time; anything else would fail for every file.
_ABOUT_AN_IMAGE = re.compile(r"image \d+: ")
# grpc core's words for a message over the receiver's limit ("Received message larger than
# max (N vs. M)"): the same in every gRPC implementation built on core.
_LARGER_THAN_MAX = "larger than max"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashion-predict", description=__doc__)
    side = "x".join(map(str, IMAGE_SHAPE))
    p.add_argument(
        "images", nargs="*", type=Path, help=f"PNG/JPEG files of {side} grayscale images"
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    p.add_argument(
        "--top-k",
        type=_top_k,
        default=0,
        help=f"also print the k most probable classes (0 to {NUM_CLASSES})",
    )
    p.add_argument(
        "--evaluate", action="store_true", help="send the real 10k test set and print the accuracy"
    )
    p.add_argument("--limit", type=int, default=None, help="with --evaluate: first N images")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="images per request (image files and --evaluate)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX directory")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument(
        "--model-version", type=int, default=0, help="version number (default: the default version)"
    )
    p.add_argument(
        "--version-label", default="", help="a version label instead, e.g. stable or canary"
    )
    p.add_argument("--info", action="store_true", help="print the served model's description")
    p.add_argument(
        "--list", action="store_true", help="list the server's services (through reflection)"
    )
    p.add_argument(
        "--call",
        metavar="SERVICE/METHOD",
        help="call any unary method by name through reflection, e.g. "
        "grpc.health.v1.Health/Check (as grpcurl does)",
    )
    p.add_argument("--data", default="{}", metavar="JSON", help="with --call: the request as JSON")
    p.add_argument(
        "--tls-ca", type=Path, help="CA certificate (PEM) to verify the server: enables TLS"
    )
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mTLS")
    p.add_argument("--tls-key", type=Path, help="client private key (PEM) for mTLS")
    return p


def _top_k(text: str) -> int:
    """--top-k: 0 to the model's class count (the server refuses more, for every file)."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= k <= NUM_CLASSES:
        raise argparse.ArgumentTypeError(
            f"{k}: the model has {NUM_CLASSES} classes; give 0 to {NUM_CLASSES}"
        )
    return k


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key)


def _chunks(
    items: Sequence[tuple[Path, bytes]], size: int, max_bytes: int
) -> Iterator[Sequence[tuple[Path, bytes]]]:
    """At most ``size`` files to a chunk, and few enough that the request fits in
    ``max_bytes`` (64 files of 64 KiB are more than gRPC's 4 MiB default)."""
    budget = max_bytes - _REQUEST_RESERVE_BYTES
    chunk: list[tuple[Path, bytes]] = []
    used = 0
    for item in items:
        cost = len(item[1]) + _IMAGE_OVERHEAD_BYTES
        if chunk and (len(chunk) == size or used + cost > budget):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += cost
    if chunk:
        yield chunk


def _print_prediction(path: Path, p: pb.Prediction, top_k: int) -> None:
    line: dict[str, object] = {
        "file": str(path),
        "label": p.label,
        "class": p.class_name,
        "confidence": round(p.confidence, 6),
    }
    if top_k:
        line["top_k"] = [
            {"label": s.label, "class": s.class_name, "probability": round(s.probability, 6)}
            for s in p.top_k
        ]
    print(json.dumps(line), flush=True)


def _file_error(path: Path, problem: str) -> None:
    print(f"fashion-predict: {path}: {problem}", file=sys.stderr, flush=True)


def _which(args: argparse.Namespace) -> dict[str, Any]:
    """The model and version the flags select, as PredictClient's keyword arguments."""
    return {
        "model_name": args.model,
        "model_version": args.model_version,
        "version_label": args.version_label,
    }


def _predict_files(
    client: PredictClient,
    files: Sequence[Path],
    top_k: int,
    batch_size: int,
    which: dict[str, Any],
) -> int:
    """One JSON line per good file, one stderr line naming each bad one; returns the bad count.

    Files go ``batch_size`` to a request (fewer where their bytes would overflow one); a
    file larger than the server accepts is named without being sent. The server refuses a
    whole request for one bad image, so a request refused for an image is resent one file at
    a time to name the culprit and still answer for the others. Other errors (a bad
    argument, server down, deadline) would fail for every file alike, so they stop the run.
    """
    failures = 0
    readable: list[tuple[Path, bytes]] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            _file_error(path, exc.strerror or str(exc))
            failures += 1
            continue
        if len(data) > MAX_ENCODED_BYTES:  # named without being sent; never overflows a request
            _file_error(
                path,
                f"{len(data)} bytes; the server accepts encoded images of at most "
                f"{MAX_ENCODED_BYTES} bytes (a {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} PNG/JPEG "
                "needs a few hundred)",
            )
            failures += 1
            continue
        readable.append((path, data))
    for chunk in _chunks(readable, batch_size, client.max_message_bytes):
        failures += _predict_chunk(client, chunk, top_k, which)
    return failures


def _predict_chunk(
    client: PredictClient,
    chunk: Sequence[tuple[Path, bytes]],
    top_k: int,
    which: dict[str, Any],
) -> int:
    """One request for ``chunk``; returns how many of its files failed.

    A server run with a smaller ``--max-message-bytes`` than this client's refuses the
    request unread (RESOURCE_EXHAUSTED); the client cannot know that limit beforehand, so
    it sends each half again, down to single files (a file alone over the limit is named)."""
    try:
        response = client.predict([data for _, data in chunk], top_k=top_k, **which)
    except PredictError as exc:
        if _too_large(exc) and len(chunk) > 1:
            half = len(chunk) // 2
            return _predict_chunk(client, chunk[:half], top_k, which) + _predict_chunk(
                client, chunk[half:], top_k, which
            )
        if not (_about_an_image(exc) or _too_large(exc)):
            raise
        if len(chunk) > 1:
            return _predict_files_one_by_one(client, chunk, top_k, which)
        _file_error(chunk[0][0], _single_image_problem(exc))
        return 1
    for (path, _), prediction in zip(chunk, response.predictions, strict=True):
        _print_prediction(path, prediction, top_k)
    return 0


def _predict_files_one_by_one(
    client: PredictClient,
    chunk: Sequence[tuple[Path, bytes]],
    top_k: int,
    which: dict[str, Any],
) -> int:
    failures = 0
    for path, data in chunk:
        try:
            response = client.predict([data], top_k=top_k, **which)
        except PredictError as exc:
            if not _about_an_image(exc):
                raise
            _file_error(path, _single_image_problem(exc))
            failures += 1
            continue
        _print_prediction(path, response.predictions[0], top_k)
    return failures


def _about_an_image(exc: PredictError) -> bool:
    return exc.code == grpc.StatusCode.INVALID_ARGUMENT and bool(_ABOUT_AN_IMAGE.match(exc.details))


def _too_large(exc: PredictError) -> bool:
    """The server's (grpc core's) refusal of a message over its ``--max-message-bytes``."""
    return exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and _LARGER_THAN_MAX in exc.details


def _single_image_problem(exc: PredictError) -> str:
    # In a one-image request the server's "image 0: " prefix says nothing; the file name does.
    return f"{exc.code.name}: {exc.details.removeprefix('image 0: ')}"


def _evaluate(client: PredictClient, args: argparse.Namespace) -> None:
    images, labels, _ = load_test_split(args.data_dir)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    predicted = np.empty(len(labels), dtype=np.int64)
    version = 0
    t0 = time.perf_counter()
    for start in range(0, len(images), args.batch_size):
        response = client.predict(images[start : start + args.batch_size], **_which(args))
        version = response.model_version
        predicted[start : start + len(response.predictions)] = [
            p.label for p in response.predictions
        ]
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "images": len(labels),
                "accuracy": round(float((predicted == labels).mean()), 6),
                "seconds": round(seconds, 3),
                "images_per_second": round(len(labels) / seconds, 1),
                "model_version": version,
            }
        )
    )


def _run(client: PredictClient, args: argparse.Namespace) -> int:
    failures = 0
    if args.list:
        for service in list_services(client.channel, timeout_s=args.timeout):
            print(service)
    if args.call:
        print(json.dumps(call_json(client.channel, args.call, args.data, timeout_s=args.timeout)))
    if args.info:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(client.model_info(**_which(args)))))
    if args.images:
        failures = _predict_files(client, args.images, args.top_k, args.batch_size, _which(args))
    if args.evaluate:
        _evaluate(client, args)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.images or args.evaluate or args.info or args.list or args.call):
        parser.error("give image files, --evaluate, --info, --list or --call")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be >= 1")
    if args.model_version < 0 or (args.model_version and args.version_label):
        parser.error("--model-version must be >= 1, and not given with --version-label")
    try:
        with PredictClient(args.target, timeout_s=args.timeout, tls=_tls(args)) as client:
            return _run(client, args)
    except grpc.RpcError as exc:  # a --list / --call made on the raw channel
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        print(f"fashion-predict: {code.name}: {details}", file=sys.stderr)
    except (PredictError, DataSetError, ReflectionError, OSError, ValueError) as exc:
        print(f"fashion-predict: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
