"""fashion-inspect on a small real trained model (the session's model_repo fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from server.repository import read_version
from training.data import DEBIAN_DIR
from training.inspect import main, trace

PNG = b"\x89PNG\r\n\x1a\n"
needs_data = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def test_course_cnn_journey_has_the_notes_shapes(model_repo: Path) -> None:
    model = onnx.load(str(read_version(model_repo, 1).model_path))
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 180
    journey = trace(model, image)
    assert [(label, maps.shape) for label, maps in journey.maps] == [
        ("conv 1", (26, 26, 64)),
        ("max pool 1", (13, 13, 64)),
        ("conv 2", (11, 11, 64)),
        ("max pool 2", (5, 5, 64)),
    ]
    assert journey.filters.shape == (64, 3, 3)
    assert all(maps.min() >= 0 for _, maps in journey.maps)  # after ReLU
    assert journey.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@needs_data
def test_cli_renders_feature_maps_for_a_test_index(model_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.png"
    assert main(["--model-repo", str(model_repo), "--index", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_cli_renders_feature_maps_for_a_png(model_repo: Path, tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "shirt.png"
    Image.fromarray(np.full((56, 56), 128, np.uint8)).save(picture)  # resized to 28x28
    out = tmp_path / "maps.png"
    argv = ["--model-repo", str(model_repo), "--version", "1", "--image", str(picture)]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


@needs_data
def test_cli_filters_demo_needs_no_model(tmp_path: Path) -> None:
    out = tmp_path / "filters.png"
    assert main(["--filters", "--index", "0", "--out", str(out), "--model-repo", "/nowhere"]) == 0
    assert out.read_bytes()[:8] == PNG


def test_missing_version_is_one_clear_error(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model-repo", str(model_repo), "--version", "99", "--image", "x.png"]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 1
    assert capsys.readouterr().err.startswith("fashion-inspect: error:")


def test_out_naming_a_directory_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # matplotlib used to write DIR.png beside the directory while the CLI printed "wrote DIR".
    target = tmp_path / "pictures"
    target.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["--filters", "--image", "x.png", "--out", str(target)])
    assert exit_info.value.code == 2
    assert "is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures"]
    assert list(target.iterdir()) == []


def test_out_without_png_suffix_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--filters", "--image", "x.png", "--out", str(tmp_path / "maps")])
    assert "ending in .png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_path_printed_is_the_path_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    picture = tmp_path / "in.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(picture)
    out = tmp_path / "Filters.PNG"
    assert main(["--filters", "--image", str(picture), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().removeprefix("wrote ")
    assert Path(printed) == out and out.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Filters.PNG", "in.png"]


def test_missing_model_repo_names_the_resolved_path_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save("in.png")
    argv = ["--model-repo", "models", "--image", "in.png", "--out", "o.png"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(tmp_path.resolve() / "models") in err
    assert "--model-repo" in err and "FASHION_MODEL_REPO" in err
