"""End to end on real data: train one epoch -> export -> parity gate -> publish -> onnxruntime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.repository import list_versions, read_version
from training.data import CLASS_NAMES, DEBIAN_DIR, load_fashion_mnist
from training.export import ParityError, scale_images
from training.train import fit, main, parse_args, seed_everything

pytestmark = [
    pytest.mark.slow,
    # Keras 3.15 turns the learning-rate Variable (logged by ReduceLROnPlateau) into numpy via
    # np.array(), and TF's Variable.__array__ lacks numpy 2's copy keyword: third-party noise.
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.skipif(
        not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
        reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
    ),
]

ARGV = ["--limit", "3000", "--epochs", "1", "--seed", "7"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    assert main([*ARGV, "--model-repo", str(root), "--data-dir", str(DEBIAN_DIR)]) == 0
    return root


def test_main_publishes_version_one_with_full_metadata(repo: Path) -> None:
    assert list_versions(repo) == [1]
    meta: dict[str, Any] = read_version(repo, 1).metadata  # also checks model_sha256
    assert meta["version"] == 1 and meta["format"] == 1 and meta["name"] == "fashion"
    assert meta["epochs_run"] == 1 and meta["parameter_count"] == 243_786
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["parity"]["images"] == 10_000 and meta["parity"]["argmax_equal"] is True
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    assert 0.6 < meta["test_accuracy"] <= 1.0  # one epoch on 2,700 images
    assert set(meta["per_class_accuracy"]) == set(CLASS_NAMES)
    assert meta["hyperparameters"]["limit"] == 3000 and meta["seed"] == 7
    assert meta["command_line"][0] == "fashion-train" and "--limit" in meta["command_line"]
    assert len(meta["data_sha256"]) == 4 and meta["training_seconds"] > 0


def test_main_prints_the_published_path(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGV, "--limit", "500", "--model-repo", str(repo)]) == 0
    assert f"published version 2 to {repo / 'fashion' / '2'}" in capsys.readouterr().out


def test_onnxruntime_on_raw_uint8_gives_keras_argmax(repo: Path) -> None:
    import onnxruntime as ort

    data = load_fashion_mnist(DEBIAN_DIR)
    # Retrain with the same seed through the same code path: deterministic training
    # must reproduce the published model, so this Keras model is the reference.
    args = parse_args([*ARGV, "--model-repo", str(repo)], {})
    seed_everything(args.seed)
    keras_probs = fit(data, args).model.predict(scale_images(data.test_images), verbose=0)

    session = ort.InferenceSession(
        str(read_version(repo, 1).model_path), providers=["CPUExecutionProvider"]
    )
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"]
    (onnx_probs,) = session.run(["probabilities"], {"images": data.test_images})
    assert onnx_probs.dtype == np.float32 and onnx_probs.shape == (10_000, 10)
    np.testing.assert_array_equal(onnx_probs.argmax(1), keras_probs.argmax(1))
    assert float(np.max(np.abs(onnx_probs - keras_probs))) <= 1e-5
    accuracy = float((onnx_probs.argmax(1) == data.test_labels).mean())
    assert accuracy == read_version(repo, 1).metadata["test_accuracy"]


def test_parity_failure_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_gate(*_: object) -> None:
        raise ParityError("parity gate failed on 10000 images: max |delta| = 0.1")

    monkeypatch.setattr("training.train.check_parity", failing_gate)
    assert main(["--limit", "500", "--epochs", "1", "--model-repo", str(tmp_path)]) == 1
    assert "parity gate failed" in capsys.readouterr().err
    assert list_versions(tmp_path) == []
    assert list(tmp_path.rglob("*")) == []  # not even a staging directory


def test_model_name_publishes_under_its_own_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--limit", "500", "--epochs", "1", "--no-report", "--model-name", "other"]
    assert main([*argv, "--model-repo", str(tmp_path)]) == 0
    assert f"published version 1 to {tmp_path / 'other' / '1'}" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir()] == ["other"]  # nothing under fashion/
    assert list_versions(tmp_path, "other") == [1] and list_versions(tmp_path) == []
    found = read_version(tmp_path, 1, "other")  # also checks model_sha256
    assert found.path == tmp_path / "other" / "1"
    assert found.metadata["name"] == "other" and found.metadata["version"] == 1


def test_label_marks_the_published_version_and_a_publish_that_would_break_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--limit", "500", "--epochs", "1", "--no-report", "--model-repo", str(tmp_path)]
    assert main([*argv, "--label", "canary"]) == 0
    assert "labelled version 1 'canary'" in capsys.readouterr().out
    config = json.loads((tmp_path / "fashion" / "config.json").read_text())
    assert config == {"version_policy": {"latest": 1}, "labels": {"canary": 1}}
    # latest 1 with canary -> 1: a new version would push that label out of the policy,
    # so the run is refused before training (exit 2) and nothing is published.
    assert main([*argv, "--label", "stable"]) == 2
    err = capsys.readouterr().err
    assert "--label stable: label 'canary' -> 1: version policy latest 1 serves [2]" in err
    assert "fashion-repo policy fashion latest:2" in err
    assert list_versions(tmp_path) == [1]
    # The same without --label: publishing would push canary out all the same (and a server
    # starting on the repository would refuse the model), so it is refused too.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: label 'canary' -> 1: version policy latest 1 serves [2]" in err
    assert "nothing was trained" in err
    assert list_versions(tmp_path) == [1]


def test_a_validation_split_that_leaves_no_image_to_train_on_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Known only once the data set is loaded (no --limit): 60,000 x (1 - 0.99999) = 0.6, and
    # Keras keeps floor(0.6) = 0 images to train on. It raised a ValueError out of fit(): a
    # traceback after TensorFlow had started, exit 1.
    argv = ["--validation-split", "0.99999", "--epochs", "1", "--model-repo", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fashion-train: error: --validation-split")
    assert "0 to train on and 60000 to validate on" in err and "Traceback" not in err
    assert list(tmp_path.rglob("*")) == []


def test_a_diverged_training_is_reported_as_such_not_as_an_export_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Adam at 1e10 turns every weight into NaN in the first epoch. The parity gate refused
    # the model (nothing was published), but said "parity gate failed ... max |delta| = nan":
    # an ONNX export problem to chase, when the export was right and the training was not.
    argv = ["--limit", "500", "--epochs", "1", "--no-report", "--learning-rate", "1e10"]
    assert main([*argv, "--model-repo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "--learning-rate" in err
    assert "parity" not in err
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_training_says_so_in_one_line(tmp_path: Path, signum: int) -> None:
    # Ctrl-C printed a 40-line KeyboardInterrupt traceback through Keras and TensorFlow;
    # SIGTERM (a deleted Kubernetes Job) ended the log mid-epoch without a word.
    command = [sys.executable, "-m", "training.train", "--limit", "3000", "--epochs", "50"]
    child = subprocess.Popen(
        [*command, "--no-report", "--model-repo", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # "Epoch 1/50" as it is printed
        # A shell's background job inherits SIGINT ignored; Ctrl-C reaches a foreground one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout is not None
    for line in child.stdout:  # Keras prints "Epoch 1/50" as training starts
        if line.startswith("Epoch 1/"):
            break
    child.send_signal(signum)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signum
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == (
        f"fashion-train: interrupted by {signal.Signals(signum).name}"
    )
    assert list(tmp_path.rglob("*")) == []  # no version, no staging directory
