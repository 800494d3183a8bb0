"""fashion-train's arguments. Parsing only: nothing here trains or imports TensorFlow."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from training.train import ENV_MODEL_REPO, Interrupted, StopRequests, parse_args


def test_defaults() -> None:
    args = parse_args([], {})
    assert args.model_repo == Path("./models")
    assert (args.epochs, args.patience, args.batch_size) == (20, 4, 128)
    assert (args.schedule, args.lr_patience, args.lr_factor) == ("plateau", 1, 0.2)
    assert (args.learning_rate, args.validation_split, args.seed) == (1e-3, 0.1, 42)
    assert (args.label_smoothing, args.augment) == (0.0, "none")
    assert args.limit is None and args.data_dir is None and args.arch == "course_cnn"


def test_environment_overrides_default_repo_and_flag_overrides_environment() -> None:
    assert parse_args([], {ENV_MODEL_REPO: "/srv/models"}).model_repo == Path("/srv/models")
    args = parse_args(["--model-repo", "/tmp/x"], {ENV_MODEL_REPO: "/srv/models"})
    assert args.model_repo == Path("/tmp/x")


def test_all_flags_parse() -> None:
    args = parse_args(
        "--epochs 2 --batch-size 64 --learning-rate 0.01 --validation-split 0.2 --seed 7 "
        "--limit 3000 --data-dir /d --model-repo /m --patience 5".split(),
        {},
    )
    assert (args.epochs, args.batch_size, args.learning_rate) == (2, 64, 0.01)
    assert (args.validation_split, args.seed, args.limit, args.patience) == (0.2, 7, 3000, 5)
    assert args.data_dir == Path("/d") and args.model_repo == Path("/m")


@pytest.mark.parametrize(
    "argv",
    [["--epochs", "0"], ["--batch-size", "0"], ["--validation-split", "1.0"], ["--limit", "0"],
     ["--learning-rate", "-1"], ["--arch", "resnet"], ["--lr-factor", "1.5"],
     ["--patience", "-1"], ["--label-smoothing", "1"], ["--label-smoothing", "-0.1"],
     ["--augment", "shift"], ["--schedule", "step"], ["--lr-patience", "-1"],
     ["--learning-rate", "nan"], ["--learning-rate", "inf"], ["--label-smoothing", "nan"],
     ["--validation-split", "0", "--lr-patience", "2"],
     ["--validation-split", "0", "--lr-factor", "0.5"]],
)  # fmt: skip
def test_invalid_values_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_args(argv, {})
    assert excinfo.value.code == 2


def test_the_architecture_brings_its_recipe_and_flags_override_it() -> None:
    args = parse_args(["--arch", "bn_cnn"], {})
    assert (args.epochs, args.schedule, args.learning_rate) == (30, "cosine", 2e-3)
    assert (args.label_smoothing, args.augment) == (0.1, "flip")
    assert args.lr_patience is None and args.lr_factor is None  # no plateau callback
    args = parse_args(
        "--arch bn_cnn --epochs 3 --schedule plateau --learning-rate 1e-4 --label-smoothing 0 "
        "--augment none".split(),
        {},
    )
    assert (args.epochs, args.schedule, args.learning_rate) == (3, "plateau", 1e-4)
    assert (args.label_smoothing, args.augment) == (0.0, "none")
    assert (args.lr_patience, args.lr_factor) == (1, 0.2)
    args = parse_args(["--schedule", "cosine", "--augment", "flip"], {})
    assert (args.arch, args.epochs, args.schedule, args.augment) == (
        "course_cnn", 20, "cosine", "flip",
    )  # fmt: skip


@pytest.mark.parametrize("flag", [["--lr-patience", "2"], ["--lr-factor", "0.5"]])
def test_plateau_flags_under_a_cosine_schedule_are_a_usage_error(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Silently ignoring them would train something other than what was asked for.
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["--arch", "bn_cnn", *flag], {})
    assert excinfo.value.code == 2
    assert "apply to --schedule plateau only" in capsys.readouterr().err


def test_quantize_is_off_by_default() -> None:
    args = parse_args([], {})
    assert args.quantize == "none" and args.no_report is False
    assert parse_args(["--quantize", "int8"], {}).quantize == "int8"


def test_unknown_quantization_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["--quantize", "int4"], {})
    assert excinfo.value.code == 2


def test_without_a_validation_split_no_plateau_schedule_is_recorded() -> None:
    # Nothing to watch, so no ReduceLROnPlateau runs; the metadata must not claim one.
    args = parse_args(["--validation-split", "0"], {})
    assert args.schedule == "plateau" and (args.lr_patience, args.lr_factor) == (None, None)


def test_a_first_signal_is_a_request_to_stop_and_a_second_stops_at_once() -> None:
    stops = StopRequests()
    stops.check()  # nothing asked
    stops.handle(signal.SIGTERM, None)  # recorded only: it may land inside TensorFlow
    with pytest.raises(Interrupted) as first:
        stops.check()  # at the next safe point
    assert first.value.code == 143 and first.value.signum == signal.SIGTERM
    with pytest.raises(Interrupted) as second:
        stops.handle(signal.SIGINT, None)
    assert second.value.code == 130
