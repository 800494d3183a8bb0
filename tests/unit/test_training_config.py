"""fashion-train's settings (training/config.py): flags, variables, recipes, checks. No TF."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.contract import MODEL_NAME, is_model_name
from training.config import (
    ConfigError,
    TrainConfig,
    build_parser,
    load_config,
    parse_args,
    variable,
    variables,
)

# One valid value per setting that is not its default, as a flag and a variable would give it.
SAMPLES = {
    "arch": "bn_cnn",
    "epochs": "3",
    "patience": "0",
    "schedule": "plateau",  # bn_cnn's recipe is cosine
    "lr_patience": "2",
    "lr_factor": "0.5",
    "batch_size": "64",
    "learning_rate": "0.01",
    "label_smoothing": "0.05",
    "augment": "none",
    "validation_split": "0.2",
    "seed": "7",
    "limit": "3000",
    "quantize": "int8",
    "no_report": "true",
    "data_dir": "/data",
    "model_repo": "/srv/models",
    "model_name": "other",
    "label": "canary",
}


def flags(values: dict[str, str]) -> list[str]:
    return [part for name, raw in values.items() for part in (f"--{name.replace('_', '-')}", raw)]


def test_the_samples_cover_every_setting() -> None:
    assert set(SAMPLES) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_defaults_are_the_default_architectures_recipe() -> None:
    config = load_config([], {})
    assert config == TrainConfig()
    assert (config.arch, config.epochs, config.learning_rate, config.schedule) == (
        "course_cnn", 20, 1e-3, "plateau",
    )  # fmt: skip
    assert (config.label_smoothing, config.augment) == (0.0, "none")
    assert (config.lr_patience, config.lr_factor) == (1, 0.2)  # plateau + validation split
    assert (config.patience, config.batch_size, config.validation_split, config.seed) == (
        4, 128, 0.1, 42,
    )  # fmt: skip
    assert config.limit is None and config.data_dir is None and config.no_report is False
    assert config.model_repo == Path("models") and config.quantize == "none"
    assert config.model_name == MODEL_NAME == "fashion"


def test_every_setting_is_a_flag_and_a_variable_and_they_agree() -> None:
    by_flags = load_config(flags(SAMPLES), {})
    by_variables = load_config([], {variable(name): raw for name, raw in SAMPLES.items()})
    assert by_flags == by_variables
    assert by_flags.arch == "bn_cnn" and by_flags.schedule == "plateau"
    assert (by_flags.lr_patience, by_flags.lr_factor, by_flags.epochs) == (2, 0.5, 3)
    assert by_flags.data_dir == Path("/data") and by_flags.model_repo == Path("/srv/models")
    assert by_flags.no_report is True and by_flags.model_name == "other"
    default = TrainConfig()
    # schedule plateau and augment none are the default's, but not bn_cnn's recipe.
    assert (TrainConfig(arch="bn_cnn").schedule, TrainConfig(arch="bn_cnn").augment) == (
        "cosine", "flip",
    )  # fmt: skip
    changed = {f.name for f in dataclasses.fields(TrainConfig)} - {"schedule", "augment"}
    assert [name for name in changed if getattr(by_flags, name) == getattr(default, name)] == []


def test_variable_names() -> None:
    assert variable("epochs") == "FASHION_TRAIN_EPOCHS"
    assert variable("model_name") == "FASHION_TRAIN_MODEL_NAME"
    # Shared with the server and with training.data's lookup, same meaning.
    assert variable("model_repo") == "FASHION_MODEL_REPO"
    assert variable("data_dir") == "FASHION_MNIST_DIR"
    own = {name for name in variables() if name.startswith("FASHION_TRAIN_")}
    assert variables() - own == {"FASHION_MODEL_REPO", "FASHION_MNIST_DIR"}


@pytest.mark.parametrize(
    ("name", "default", "recipe", "env", "flag"),
    [
        ("epochs", 20, 30, "5", "3"),
        ("learning_rate", 1e-3, 2e-3, "0.005", "0.0001"),
        ("label_smoothing", 0.0, 0.1, "0.2", "0.3"),
        ("augment", "none", "flip", "none", "flip"),
        ("schedule", "plateau", "cosine", "plateau", "cosine"),
    ],
)
def test_flag_beats_variable_beats_recipe_beats_default(
    name: str, default: object, recipe: object, env: str, flag: str
) -> None:
    variable_ = variable(name)
    option = f"--{name.replace('_', '-')}"
    assert getattr(load_config([], {}), name) == default
    assert getattr(load_config(["--arch", "bn_cnn"], {}), name) == recipe
    # The architecture itself may come from the environment; its recipe follows it.
    assert getattr(load_config([], {"FASHION_TRAIN_ARCH": "bn_cnn"}), name) == recipe
    from_env = load_config(["--arch", "bn_cnn"], {variable_: env})
    assert str(getattr(from_env, name)) == str(type(recipe)(env))
    from_flag = load_config(["--arch", "bn_cnn", option, flag], {variable_: env})
    assert str(getattr(from_flag, name)) == str(type(recipe)(flag))


def test_flag_beats_variable_beats_default() -> None:
    assert load_config([], {}).batch_size == 128
    assert load_config([], {"FASHION_TRAIN_BATCH_SIZE": "64"}).batch_size == 64
    assert load_config(["--batch-size", "32"], {"FASHION_TRAIN_BATCH_SIZE": "64"}).batch_size == 32
    env = {"FASHION_MODEL_REPO": "/srv/models"}
    assert load_config([], env).model_repo == Path("/srv/models")
    assert load_config(["--model-repo", "/tmp/x"], env).model_repo == Path("/tmp/x")


def test_an_empty_variable_is_unset() -> None:
    env = {"FASHION_MODEL_REPO": "", "FASHION_MNIST_DIR": "", "FASHION_TRAIN_EPOCHS": ""}
    assert load_config([], env) == TrainConfig()


def test_a_bool_is_a_bare_flag_or_a_value() -> None:
    assert load_config(["--no-report"], {}).no_report is True
    assert load_config(["--no-report", "false"], {}).no_report is False
    assert load_config([], {"FASHION_TRAIN_NO_REPORT": "yes"}).no_report is True
    assert load_config(["--no-report", "off"], {"FASHION_TRAIN_NO_REPORT": "1"}).no_report is False


LR = "--learning-rate / FASHION_TRAIN_LEARNING_RATE"
SMOOTHING = "--label-smoothing / FASHION_TRAIN_LABEL_SMOOTHING"
SPLIT = "--validation-split / FASHION_TRAIN_VALIDATION_SPLIT"
PATIENCE = "--lr-patience / FASHION_TRAIN_LR_PATIENCE"
FACTOR = "--lr-factor / FASHION_TRAIN_LR_FACTOR"


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("epochs", "0", "--epochs / FASHION_TRAIN_EPOCHS must be >= 1, got 0"),
        ("patience", "-1", "--patience / FASHION_TRAIN_PATIENCE must be >= 0, got -1"),
        ("lr_patience", "-1", f"{PATIENCE} must be >= 0, got -1"),
        ("lr_factor", "1.5", f"{FACTOR} must be in (0, 1), got 1.5"),
        ("lr_factor", "0", f"{FACTOR} must be in (0, 1), got 0.0"),
        ("lr_factor", "1", f"{FACTOR} must be in (0, 1), got 1.0"),
        ("batch_size", "0", "--batch-size / FASHION_TRAIN_BATCH_SIZE must be >= 1, got 0"),
        (
            "learning_rate",
            "-1",
            f"{LR} must be > 0, got -1.0",
        ),
        ("learning_rate", "0", f"{LR} must be > 0, got 0.0"),
        (
            "learning_rate",
            "nan",
            f"{LR} must be a finite number, got nan",
        ),
        (
            "learning_rate",
            "inf",
            f"{LR} must be a finite number, got inf",
        ),
        (
            "label_smoothing",
            "1",
            f"{SMOOTHING} must be in [0, 1), got 1.0",
        ),
        (
            "label_smoothing",
            "-0.1",
            f"{SMOOTHING} must be in [0, 1), got -0.1",
        ),
        (
            "label_smoothing",
            "nan",
            f"{SMOOTHING} must be a finite number, got nan",
        ),
        (
            "validation_split",
            "1.0",
            f"{SPLIT} must be in [0, 1), got 1.0",
        ),
        ("seed", "-1", "--seed / FASHION_TRAIN_SEED must be in [0, 4294967295], got -1"),
        ("seed", "4294967296", "--seed / FASHION_TRAIN_SEED must be in [0, 4294967295], got 4294967296"),  # noqa: E501
        ("limit", "0", "--limit / FASHION_TRAIN_LIMIT must be >= 1, got 0"),
        ("arch", "resnet", "--arch / FASHION_TRAIN_ARCH must be one of "
         "course_cnn, bn_cnn, got 'resnet'"),
        ("schedule", "step", "--schedule / FASHION_TRAIN_SCHEDULE must be one of "
         "plateau, cosine, got 'step'"),
        ("augment", "shift", "--augment / FASHION_TRAIN_AUGMENT must be one of "
         "none, flip, got 'shift'"),
        ("quantize", "int4", "--quantize / FASHION_TRAIN_QUANTIZE must be one of "
         "none, int8, got 'int4'"),
        ("epochs", "two", "--epochs / FASHION_TRAIN_EPOCHS must be an integer, got 'two'"),
        ("epochs", "2.5", "--epochs / FASHION_TRAIN_EPOCHS must be an integer, got '2.5'"),
        ("learning_rate", "fast", f"{LR} must be a number, got 'fast'"),
        (
            "no_report",
            "maybe",
            "--no-report / FASHION_TRAIN_NO_REPORT must be one of 1, true, yes, on, 0, false, "
            "no, off, got 'maybe'",
        ),
    ],
)  # fmt: skip
def test_a_value_out_of_bounds_names_the_flag_and_the_variable(
    name: str, raw: str, message: str
) -> None:
    option = f"--{name.replace('_', '-')}"
    with pytest.raises(ConfigError) as by_flag:
        load_config([option, raw], {})
    assert str(by_flag.value) == message
    with pytest.raises(ConfigError) as by_variable:
        load_config([], {variable(name): raw})
    assert str(by_variable.value) == message


@pytest.mark.parametrize(
    ("argv", "env", "given"),
    [
        (["--arch", "bn_cnn", "--lr-patience", "2"], {}, PATIENCE),
        (["--schedule", "cosine", "--lr-factor", "0.5"], {}, FACTOR),
        ([], {"FASHION_TRAIN_SCHEDULE": "cosine", "FASHION_TRAIN_LR_PATIENCE": "2"}, PATIENCE),
        (
            ["--arch", "bn_cnn"],
            {"FASHION_TRAIN_LR_PATIENCE": "2", "FASHION_TRAIN_LR_FACTOR": "0.5"},
            f"{PATIENCE} and {FACTOR}",
        ),
    ],
)  # fmt: skip
def test_plateau_settings_under_another_schedule_are_refused(
    argv: list[str], env: dict[str, str], given: str
) -> None:
    # Silently ignoring them would train something other than what was asked for.
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    message = str(info.value)
    assert "--lr-patience and --lr-factor apply to --schedule plateau only" in message
    assert given in message and message.endswith("the schedule is cosine")


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--validation-split", "0", "--lr-patience", "2"], {}),
        (["--validation-split", "0"], {"FASHION_TRAIN_LR_FACTOR": "0.5"}),
        (["--lr-factor", "0.5"], {"FASHION_TRAIN_VALIDATION_SPLIT": "0"}),
    ],
)
def test_plateau_settings_without_a_validation_split_are_refused(
    argv: list[str], env: dict[str, str]
) -> None:
    with pytest.raises(
        ConfigError, match="watch val_loss: they need --validation-split > 0"
    ) as info:
        load_config(argv, env)
    assert "--validation-split / FASHION_TRAIN_VALIDATION_SPLIT is 0" in str(info.value)


def test_plateau_defaults_only_where_a_plateau_is_watched() -> None:
    assert (load_config([], {}).lr_patience, load_config([], {}).lr_factor) == (1, 0.2)
    cosine = load_config(["--arch", "bn_cnn"], {})
    assert (cosine.lr_patience, cosine.lr_factor) == (None, None)  # no plateau callback
    unwatched = load_config(["--validation-split", "0"], {})
    assert unwatched.schedule == "plateau" and (unwatched.lr_patience, unwatched.lr_factor) == (
        None, None,
    )  # fmt: skip
    given = load_config(["--arch", "bn_cnn", "--schedule", "plateau", "--lr-factor", "0.5"], {})
    assert (given.lr_patience, given.lr_factor) == (1, 0.5)
    assert load_config(["--lr-patience", "0"], {}).lr_patience == 0  # a constant rate


def test_the_config_is_frozen_and_checked_on_every_construction() -> None:
    config = load_config([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    assert dataclasses.replace(config, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="--epochs / FASHION_TRAIN_EPOCHS must be >= 1, got 0"):
        dataclasses.replace(config, epochs=0)
    with pytest.raises(ConfigError, match="apply to --schedule plateau only"):
        dataclasses.replace(config, schedule="cosine")  # its filled plateau settings travel
    direct = TrainConfig(arch="bn_cnn")
    assert direct == load_config(["--arch", "bn_cnn"], {}) and direct.epochs == 30


@pytest.mark.parametrize(
    "name", ["fashion", "other", "a", "A", "9", "fashion.v2", "my_model-1", "x" * 64, "a..b"]
)
def test_valid_model_names(name: str) -> None:
    assert is_model_name(name)
    assert load_config(["--model-name", name], {}).model_name == name
    assert load_config([], {"FASHION_TRAIN_MODEL_NAME": name}).model_name == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "-x", "_x", "a/b", "../up", "a b", "mödel", "modèl", "x" * 65,
     "fashion\n", "a\\b", "a:b", "\u0661"],
)  # fmt: skip
def test_invalid_model_names_are_refused(name: str) -> None:
    assert not is_model_name(name)
    with pytest.raises(ConfigError) as info:
        TrainConfig(model_name=name)
    assert str(info.value).startswith(
        "--model-name / FASHION_TRAIN_MODEL_NAME must be ASCII letters, digits, '_', '.' or '-'"
    )
    assert str(info.value).endswith(f"got {name!r}")


@pytest.mark.parametrize("label", ["3", "-x", "a b", "x" * 65, "canary\n"])
def test_a_label_that_is_not_a_name_is_refused_before_training(label: str) -> None:
    refused = r"^--label / FASHION_TRAIN_LABEL: label .* is not a name"
    with pytest.raises(ConfigError, match=refused):
        load_config([f"--label={label}"], {})
    assert load_config([], {"FASHION_TRAIN_LABEL": "canary"}).label == "canary"


def test_a_model_repo_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError, match=r"--model-repo / FASHION_MODEL_REPO: .* not a directory"):
        load_config([], {"FASHION_MODEL_REPO": str(file)})
    assert load_config(["--model-repo", str(tmp_path / "new")], {}).model_repo == tmp_path / "new"


def test_a_misspelt_training_variable_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], {"FASHION_TRAIN_EPOCH": "3"})
    assert str(info.value) == (
        "unknown setting FASHION_TRAIN_EPOCH; did you mean FASHION_TRAIN_EPOCHS?"
    )
    with pytest.raises(ConfigError, match="unknown setting FASHION_TRAIN_COLOUR; fashion-train"):
        load_config([], {"FASHION_TRAIN_COLOUR": "red"})


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("FASHION_TRAIN_MODEL_REPO", "FASHION_MODEL_REPO"),
        ("FASHION_TRAIN_DATA_DIR", "FASHION_MNIST_DIR"),
    ],
)
def test_the_two_shared_settings_under_the_training_prefix_point_at_their_variable(
    name: str, meant: str
) -> None:
    # "Every flag is FASHION_TRAIN_<FLAG>" but these two: refused with "fashion-train --help
    # lists them", where the setting the operator meant is known.
    with pytest.raises(ConfigError) as info:
        load_config([], {name: "/srv"})
    assert str(info.value) == f"unknown setting {name}; did you mean {meant}?"


def test_other_variables_are_not_trainings_business() -> None:
    env = {
        # The server's settings, in the same pod spec.
        "FASHION_PORT": "50051",
        "FASHION_MAX_BATCH_SIZE": "64",
        # Kubernetes service links of a Service named fashion-train.
        "FASHION_TRAIN_SERVICE_HOST": "10.96.1.2",
        "FASHION_TRAIN_SERVICE_PORT": "80",
        "FASHION_TRAIN_PORT": "tcp://10.96.1.2:80",
        "FASHION_TRAIN_PORT_80_TCP": "tcp://10.96.1.2:80",
        "FASHION_TRAIN_PORT_80_TCP_ADDR": "10.96.1.2",
    }
    assert load_config([], env) == TrainConfig()


def test_a_usage_error_exits_2_naming_the_flag_and_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args([], {"FASHION_TRAIN_EPOCHS": "0"})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fashion-train")
    assert "fashion-train: error: --epochs / FASHION_TRAIN_EPOCHS must be >= 1, got 0" in err


def test_help_lists_every_flag_with_its_variable_and_default() -> None:
    body = build_parser().format_help().split("\noptions:\n", 1)[1]
    entries = {}
    for entry in re.split(r"\n(?=  -)", body):
        entries[entry.split()[0].rstrip(",")] = " ".join(entry.split())
    for f in dataclasses.fields(TrainConfig):
        entry = entries.pop(f"--{f.name.replace('_', '-')}")
        assert re.search(rf"\(env {variable(f.name)}, default [^)]+\)$", entry), entry
    assert set(entries) == {"-h"}
    assert entries == {"-h": "-h, --help show this help message and exit"}
    text = " ".join(body.split())
    assert "(env FASHION_TRAIN_PATIENCE, default 4)" in text
    assert "(env FASHION_MODEL_REPO, default models)" in text
    assert "(env FASHION_TRAIN_LR_PATIENCE, default 1 under --schedule plateau)" in text
    assert "(env FASHION_TRAIN_EPOCHS, default the --arch recipe)" in text
    assert "(env FASHION_TRAIN_MODEL_NAME, default fashion)" in text


def test_importing_the_config_does_not_import_tensorflow() -> None:
    code = (
        "import sys, training.config;"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if m in sys.modules];"
        "sys.exit(repr(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("argv", "trained", "held"),
    [
        (["--limit", "1"], 0, 1),  # 10 % of one image: Keras keeps floor(0.9) = 0 to train on
        (["--limit", "3000", "--validation-split", "0.9999"], 0, 3000),
        (["--limit", "5", "--validation-split", "1e-17"], 5, 0),  # 1 - 1e-17 == 1.0
    ],
)
def test_a_limit_that_leaves_nothing_to_train_or_validate_on_is_refused(
    argv: list[str], trained: int, held: int
) -> None:
    # Keras' fit(validation_split=...) raised a ValueError after TensorFlow had started: a
    # traceback, exit 1. Now a usage error naming both settings, before anything starts.
    with pytest.raises(ConfigError) as info:
        load_config(argv, {})
    message = str(info.value)
    assert "--limit / FASHION_TRAIN_LIMIT" in message
    assert "--validation-split / FASHION_TRAIN_VALIDATION_SPLIT" in message
    assert f"{trained} to train on and {held} to validate on" in message
    # Without a validation split one image is enough.
    assert load_config(["--limit", "1", "--validation-split", "0"], {}).limit == 1
    assert load_config(["--limit", "10"], {}).limit == 10  # 9 + 1
