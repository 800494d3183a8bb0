"""Rewrite the sample images in this folder from the installed Fashion-MNIST test set.

    python examples/generate.py [--data-dir DIR]

Each file is the first test-set image of its class, written as an 8-bit grayscale 28x28 PNG
with its pixels unchanged; ``examples/README.md`` lists the index and class of each.
tests/unit/test_client_examples.py checks that the committed files still match the data set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from training.data import CLASS_NAMES, load_test_split  # the project's venv (up.sh's .venv)

ROOT = Path(__file__).resolve().parent


def file_name(label: int) -> str:
    """``T-shirt/top`` -> ``t-shirt-top.png``, ``Ankle boot`` -> ``ankle-boot.png``."""
    return CLASS_NAMES[label].lower().replace("/", "-").replace(" ", "-") + ".png"


def first_of_each_class(labels: np.ndarray) -> dict[int, int]:
    """label -> index of its first image in the test set."""
    return {label: int(np.argmax(labels == label)) for label in range(len(CLASS_NAMES))}


def main() -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    images, labels, _ = load_test_split(args.data_dir)
    for label, index in first_of_each_class(labels).items():
        Image.fromarray(images[index]).save(ROOT / file_name(label), optimize=True)
        print(f"| `{file_name(label)}` | {index} | {label} {CLASS_NAMES[label]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
