"""``fashion-inspect``: what the convolutions do, as one PNG.

``fashion-inspect --model-repo DIR [--version N] (--image PNG | --index I) --out FILE.png``
renders the journey of one image through a published model: the input, the first layer's
learned 3x3 filters, and the feature maps after every convolution (after its ReLU) and every
max pooling (course_cnn: 28x28 -> 26x26x64 -> 13x13x64 -> 11x11x64 -> 5x5x64).

The feature maps come from the published ONNX model itself (its Conv/ReLU and MaxPool outputs
are exposed as extra graph outputs and run in onnxruntime), so any published version can be
inspected, including ones trained before this tool existed, without TensorFlow.

``fashion-inspect --filters (--image PNG | --index I) --out FILE.png`` needs no model: the
notes' hand-made vertical- and horizontal-line filters and 2x2 max pooling (training.filters).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.contract import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import onnx

# Elementwise ops that belong to a convolution "layer" (bias, folded batch norm, activation).
_LAYER_TAIL_OPS = frozenset({"Relu", "BatchNormalization", "Add", "Mul", "Clip", "LeakyRelu"})
ENV_MODEL_REPO = "FASHION_MODEL_REPO"


@dataclass(frozen=True)
class Stage:
    label: str  # "conv 1", "max pool 1", ...
    tensor: str  # ONNX tensor name


@dataclass(frozen=True)
class Journey:
    image: np.ndarray  # uint8 [28, 28]
    filters: np.ndarray  # first conv's weights [out_channels, 3, 3]
    maps: list[tuple[str, np.ndarray]]  # (label, [H, W, C]) in graph order
    probabilities: np.ndarray  # [10]


def feature_stages(model: onnx.ModelProto) -> list[Stage]:
    """Each Conv (followed through its bias/normalisation/activation) and each MaxPool."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stages: list[Stage] = []
    convs = pools = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            convs += 1
            tensor = node.output[0]
            while len(following := consumers.get(tensor, [])) == 1 and (
                following[0].op_type in _LAYER_TAIL_OPS
            ):
                tensor = following[0].output[0]
            stages.append(Stage(f"conv {convs}", tensor))
        elif node.op_type == "MaxPool":
            pools += 1
            stages.append(Stage(f"max pool {pools}", node.output[0]))
    return stages


def first_conv_filters(model: onnx.ModelProto) -> np.ndarray:
    """The first Conv's kernels as ``[out_channels, kh, kw]`` (single input channel)."""
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in weights:
            kernel = numpy_helper.to_array(weights[node.input[1]])  # [out, in, kh, kw]
            return kernel[:, 0]
    raise ValueError("the graph has no Conv node with constant weights")


def trace(model: onnx.ModelProto, image: np.ndarray) -> Journey:
    """Run one uint8 28x28 image and collect every stage's output (NCHW -> HWC)."""
    import onnx
    import onnxruntime as ort

    stages = feature_stages(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {output.name for output in exposed.graph.output}
    for stage in stages:
        if stage.tensor not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=stage.tensor))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [OUTPUT_NAME, *(stage.tensor for stage in stages)]
    outputs = session.run(names, {INPUT_NAME: image[np.newaxis].astype(np.uint8)})
    maps = [
        (stage.label, np.transpose(out[0], (1, 2, 0)))
        for stage, out in zip(stages, outputs[1:], strict=True)
    ]
    return Journey(image, first_conv_filters(model), maps, outputs[0][0])


def mosaic(maps: np.ndarray, columns: int = 8) -> np.ndarray:
    """``[H, W, C]`` -> one 2-D image of C tiles (each scaled to 0..1), 1-pixel NaN gaps."""
    height, width, channels = maps.shape
    rows = -(-channels // columns)
    out = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for channel in range(channels):
        tile = maps[:, :, channel].astype(np.float64)
        span = tile.max() - tile.min()
        tile = (tile - tile.min()) / span if span > 0 else np.zeros_like(tile)
        row, col = divmod(channel, columns)
        out[row * (height + 1) : row * (height + 1) + height,
            col * (width + 1) : col * (width + 1) + width] = tile  # fmt: skip
    return out


def render_journey(
    journey: Journey, class_names: Sequence[str], path: Path, *, title: str = ""
) -> None:
    from matplotlib.figure import Figure

    panels = 2 + len(journey.maps)
    columns = -(-panels // 2)
    figure = Figure(figsize=(4.2 * columns, 9))
    axes = np.atleast_1d(figure.subplots(2, columns)).ravel()
    guess = int(journey.probabilities.argmax())
    axes[0].imshow(journey.image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(
        f"input 28x28\npredicted: {class_names[guess]} ({journey.probabilities[guess]:.2f})"
    )
    filters = np.transpose(journey.filters, (1, 2, 0))
    axes[1].imshow(mosaic(filters), cmap="coolwarm")
    axes[1].set_title(f"first layer's learned filters\n{filters.shape[2]} x 3x3")
    for axis, (label, maps) in zip(axes[2:], journey.maps, strict=False):
        axis.imshow(mosaic(maps), cmap="viridis")
        axis.set_title(f"{label}\n{maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[panels:]:
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def load_png(path: Path) -> np.ndarray:
    """A PNG as uint8 28x28 grayscale (resized if needed). Fashion-MNIST is light on dark."""
    from PIL import Image

    with Image.open(path) as picture:
        gray = picture.convert("L")
        if gray.size != (28, 28):
            gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
        return np.asarray(gray, dtype=np.uint8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-inspect",
        description="Render the feature maps of a published model for one image, or the "
        "course notes' hand-made filters (--filters).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="a PNG (converted to 28x28 grayscale)")
    source.add_argument("--index", type=int, help="an index into the 10k test set")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--filters", action="store_true", help="hand-made filters; no model")
    parser.add_argument(
        "--model-repo",
        type=Path,
        default=Path(os.environ.get(ENV_MODEL_REPO) or "./models"),
        help=f"model repository root (default ${ENV_MODEL_REPO} or ./models)",
    )
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--data-dir", type=Path, default=None, help="dir with the IDX gz files")
    args = parser.parse_args(argv)
    if args.index is not None and not 0 <= args.index < 10_000:
        parser.error("--index must be in 0..9999")
    # matplotlib appends ".png" to a name without one (a directory "maps" became "maps.png"):
    # insist on the exact file, so the path printed is the path written.
    if args.out.is_dir():
        example = args.out / "maps.png"
        parser.error(f"--out {args.out} is a directory; give the PNG file to write, e.g. {example}")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: give a file name ending in .png")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from server.errors import ModelLoadError, VersionNotFound
    from server.repository import latest_version, read_version
    from training.data import CLASS_NAMES, DataError, load_test_split

    args = parse_args(argv)
    try:
        if args.image is not None:
            image, label = load_png(args.image), f"{args.image.name}"
        else:
            images, labels, _ = load_test_split(args.data_dir)  # the two test files suffice
            truth = CLASS_NAMES[int(labels[args.index])]
            image, label = images[args.index], f"test image #{args.index} ({truth})"
        if args.filters:
            from training.filters import render_filters_demo

            render_filters_demo(image, args.out, title=f"Hand-made filters on {label}")
        else:
            import onnx

            version = args.version or latest_version(args.model_repo)
            if version is None:
                raise VersionNotFound(
                    f"no published version in {args.model_repo.resolve()}/fashion/: give "
                    f"--model-repo DIR or set ${ENV_MODEL_REPO} (the default ./models is "
                    "relative to the current directory)"
                )
            found = read_version(args.model_repo, version)
            journey = trace(onnx.load(str(found.model_path)), image)
            arch = found.metadata.get("architecture", "?")
            names = found.metadata.get("class_names") or list(CLASS_NAMES)
            render_journey(journey, names, args.out, title=f"{label} through {arch} v{version}")
    except (DataError, ModelLoadError, VersionNotFound, OSError, ValueError) as exc:
        print(f"fashion-inspect: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
