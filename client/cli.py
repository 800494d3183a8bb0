"""``fashion-predict``: classify image files, or evaluate the test set, through a server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from client.predictor import PredictClient, PredictError, TlsConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashion-predict", description=__doc__)
    p.add_argument("images", nargs="*", type=Path, help="PNG/JPEG files of 28x28 grayscale images")
    p.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    p.add_argument("--top-k", type=int, default=0, help="also print the k most probable classes")
    p.add_argument(
        "--evaluate", action="store_true", help="send the real 10k test set and print the accuracy"
    )
    p.add_argument("--limit", type=int, default=None, help="with --evaluate: first N images")
    p.add_argument("--batch-size", type=int, default=64, help="with --evaluate: images per request")
    p.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX directory")
    p.add_argument("--info", action="store_true", help="print the served model's description")
    p.add_argument(
        "--tls-ca", type=Path, help="CA certificate (PEM) to verify the server: enables TLS"
    )
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mTLS")
    p.add_argument("--tls-key", type=Path, help="client private key (PEM) for mTLS")
    return p


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key)


def _predict_files(client: PredictClient, files: Sequence[Path], top_k: int) -> None:
    response = client.predict([f.read_bytes() for f in files], top_k=top_k)
    for path, p in zip(files, response.predictions, strict=True):
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
        print(json.dumps(line))


def _evaluate(client: PredictClient, args: argparse.Namespace) -> None:
    from training.data import load_fashion_mnist  # numpy-only loader, no TensorFlow

    data = load_fashion_mnist(args.data_dir, allow_download=False)
    images, labels = data.test_images, data.test_labels
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    predicted = np.empty(len(labels), dtype=np.int64)
    version = 0
    t0 = time.perf_counter()
    for start in range(0, len(images), args.batch_size):
        response = client.predict(images[start : start + args.batch_size])
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.images or args.evaluate or args.info):
        parser.error("give image files, --evaluate or --info")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be >= 1")
    try:
        with PredictClient(args.target, timeout_s=args.timeout, tls=_tls(args)) as client:
            if args.info:
                from google.protobuf.json_format import MessageToDict

                print(json.dumps(MessageToDict(client.model_info())))
            if args.images:
                _predict_files(client, args.images, args.top_k)
            if args.evaluate:
                _evaluate(client, args)
    except PredictError as exc:
        print(f"fashion-predict: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"fashion-predict: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
