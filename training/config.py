"""``fashion-train``'s settings: one frozen, typed object from flags, variables and defaults.

Field ``x_y`` = flag ``--x-y`` = variable ``FASHION_TRAIN_X_Y``, except two names shared
with the rest of the project: ``model_repo`` is ``FASHION_MODEL_REPO`` (the repository the
server reads, same meaning) and ``data_dir`` is ``FASHION_MNIST_DIR`` (training.data's
lookup). ``FASHION_TRAIN_`` is training's own prefix: the server's environment check
(server/config.py) lets those names pass, so one pod spec may carry both commands'
settings, and here an unknown ``FASHION_TRAIN_*`` name is refused (a typo must not train
something else than what was asked for).

Precedence: flag > variable > the architecture's recipe (training.recipe fills ``epochs``,
``learning_rate``, ``schedule``, ``label_smoothing`` and ``augment``) > default. An empty
variable counts as unset. Under the plateau schedule with a validation split,
``lr_patience`` and ``lr_factor`` default to ReduceLROnPlateau's settings below; otherwise
they stay None, and giving them is an error.

Every value is checked once, when the object is built, with a message naming the flag and
the variable; the recipe's values are filled in then, and nothing changes the object
afterwards. No TensorFlow here (the unit tests and the manifests' tests import it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from server.contract import MODEL_NAME, is_model_name
from server.env_vars import BadValue, closest_setting, is_service_link, parse_value
from server.serving_config import ConfigRefused, check_label_name
from training.model import ARCHITECTURES
from training.recipe import AUGMENTATIONS, RECIPES, SCHEDULES, split_sizes

ENV_PREFIX = "FASHION_TRAIN_"
ENV_MODEL_REPO = "FASHION_MODEL_REPO"
ENV_DATA_DIR = "FASHION_MNIST_DIR"  # = training.data.ENV_DATA_DIR (kept numpy-free here)
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")
# ReduceLROnPlateau's settings under --schedule plateau.
DEFAULT_LR_PATIENCE = 1
DEFAULT_LR_FACTOR = 0.2
# The fields an architecture's recipe fills when neither flag nor variable sets them.
RECIPE_FIELDS: tuple[str, ...] = (
    "epochs",
    "learning_rate",
    "schedule",
    "label_smoothing",
    "augment",
)
# numpy's and Keras' seeding take an unsigned 32-bit seed.
MAX_SEED = 2**32 - 1

_FROM_RECIPE = "the --arch recipe"
_RECIPES = "; ".join(f"{name}: {recipe}" for name, recipe in RECIPES.items())


class ConfigError(ValueError):
    """A setting is invalid; the message names its flag and its variable."""


def _setting(default: Any, help: str, **meta: Any) -> Any:
    """A field: ``help``; checks ``min``/``max`` (closed), ``above``/``below`` (open),
    ``choices``; ``env`` (its variable, when not ``FASHION_TRAIN_<NAME>``) and ``shown``
    (the default as ``--help`` words it, when not the value itself)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fashion-train`` can be told, checked and complete (see the module doc).

    A field given as None that a recipe or the plateau schedule fills is filled here, once;
    ``dataclasses.replace`` therefore keeps filled values as if they had been given.
    """

    arch: str = _setting(
        "course_cnn", f"network; each has a training recipe ({_RECIPES})", choices=ARCHITECTURES
    )
    epochs: int = _setting(None, "maximum epochs (early stopping)", min=1, shown=_FROM_RECIPE)
    patience: int = _setting(4, "stop after this many epochs without val_loss gain", min=0)
    schedule: str = _setting(
        None,
        "plateau: lower the rate when val_loss stalls; cosine: warm up to --learning-rate, "
        "then decay to zero at the last epoch",
        choices=SCHEDULES,
        shown=_FROM_RECIPE,
    )
    lr_patience: int | None = _setting(
        None,
        "plateau only: multiply the learning rate by --lr-factor after this many epochs "
        "without val_loss gain (0: constant learning rate)",
        min=0,
        shown=f"{DEFAULT_LR_PATIENCE} under --schedule plateau",
    )
    lr_factor: float | None = _setting(
        None,
        "plateau only: learning-rate reduction",
        above=0.0,
        below=1.0,
        shown=f"{DEFAULT_LR_FACTOR} under --schedule plateau",
    )
    batch_size: int = _setting(128, "images per step", min=1)
    learning_rate: float = _setting(
        None, "Adam learning rate (the peak under cosine)", above=0.0, shown=_FROM_RECIPE
    )
    label_smoothing: float = _setting(
        None, "label smoothing of the loss", min=0.0, below=1.0, shown=_FROM_RECIPE
    )
    augment: str = _setting(
        None,
        "training-time augmentation (never exported)",
        choices=AUGMENTATIONS,
        shown=_FROM_RECIPE,
    )
    validation_split: float = _setting(
        0.1,
        "held-out fraction for early stopping (0: none, so no early stopping and no plateau)",
        min=0.0,
        below=1.0,
    )
    seed: int = _setting(42, "seeds Python, numpy and TF", min=0, max=MAX_SEED)
    limit: int | None = _setting(None, "train on the first N images", min=1, shown="all")
    quantize: str = _setting(
        "none",
        "int8: also publish a static INT8 (QDQ) model.int8.onnx when its test accuracy "
        "is within 0.3 points of the float model",
        choices=QUANTIZE_CHOICES,
    )
    no_report: bool = _setting(False, "skip report.md and its plots")
    data_dir: Path | None = _setting(  # noqa: RUF009 (None)
        None,
        "directory with the four IDX gz files",
        env=ENV_DATA_DIR,
        shown="looked up: Debian's dataset-fashion-mnist, the Keras cache, a download",
    )
    model_repo: Path = _setting(  # noqa: RUF009 (Path is immutable)
        Path("models"), "model repository root", env=ENV_MODEL_REPO
    )
    model_name: str = _setting(
        MODEL_NAME,
        "publish under <model-repo>/<model-name>/<version>/: ASCII letters, digits, _ . -, "
        "starting with a letter or digit, at most 64 characters",
    )
    label: str = _setting(
        "",
        "point this label of the model's config.json at the new version as it is published "
        "(e.g. canary; see fashion-repo). Checked before training: a label the server would "
        "refuse stops the run before it starts",
        shown="none",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _check(f, value)
        if not is_model_name(self.model_name):
            raise ConfigError(
                f"{names('model_name')} must be ASCII letters, digits, '_', '.' or '-', "
                f"starting with a letter or digit, at most 64 characters, got {self.model_name!r}"
            )
        if self.label:
            try:
                check_label_name(self.label)
            except ConfigRefused as exc:
                raise ConfigError(f"{names('label')}: {exc}") from None
        if Path(self.model_repo).exists() and not Path(self.model_repo).is_dir():
            raise ConfigError(f"{names('model_repo')}: {str(self.model_repo)!r} is not a directory")
        recipe = RECIPES[self.arch]
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                # Frozen: the recipe's value takes the place of the None given.
                object.__setattr__(self, name, getattr(recipe, name))
        self._check_plateau()
        if self.limit is not None:
            # The number trained on when the data set holds at least --limit images (the
            # real one has 60,000): refused now, before the data loads and TensorFlow starts;
            # run() checks again with the images actually loaded.
            check_split(self, self.limit)

    def _check_plateau(self) -> None:
        """ReduceLROnPlateau's settings: filled where it runs, refused where it cannot."""
        given = [name for name in ("lr_patience", "lr_factor") if getattr(self, name) is not None]
        shown = " and ".join(names(name) for name in given)
        if self.schedule != "plateau":
            if given:
                raise ConfigError(
                    f"--lr-patience and --lr-factor apply to --schedule plateau only: {shown} "
                    f"given, and the schedule is {self.schedule}"
                )
        elif self.validation_split == 0:
            # No validation loss to watch: no plateau callback, and metadata says so (None).
            if given:
                raise ConfigError(
                    f"--lr-patience and --lr-factor watch val_loss: they need "
                    f"--validation-split > 0 ({shown} given, and {names('validation_split')} is 0)"
                )
        else:
            for name, default in (
                ("lr_patience", DEFAULT_LR_PATIENCE),
                ("lr_factor", DEFAULT_LR_FACTOR),
            ):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)


def check_split(config: TrainConfig, images: int) -> None:
    """ConfigError unless ``images`` (the first ``--limit`` training images) split into at
    least one to train on and, with a validation split, one to validate on.

    ``Model.fit(validation_split=...)`` refuses anything less with a ValueError, which came out
    of fashion-train as a traceback once TensorFlow had started (``--limit 1``, or a split
    close to 0 or 1).
    """
    trained, held = split_sizes(images, config.validation_split)
    if trained and (held or config.validation_split == 0):
        return
    split = f"{names('validation_split')} {config.validation_split:g}"
    given = f"{names('limit')} {config.limit} with {split}" if config.limit is not None else split
    raise ConfigError(
        f"{given} splits {images} training image(s) into {trained} to train on and {held} "
        "to validate on: training needs at least one of each (or --validation-split 0)"
    )


def variable(name: str) -> str:
    """The environment variable of field ``name``."""
    f = _FIELDS[name]
    return str(f.metadata.get("env", f"{ENV_PREFIX}{name.upper()}"))


def names(name: str) -> str:
    """``--flag / VARIABLE`` of field ``name``: where an operator sets it."""
    return f"--{name.replace('_', '-')} / {variable(name)}"


def variables() -> frozenset[str]:
    """Every variable ``fashion-train`` reads."""
    return frozenset(variable(name) for name in _FIELDS)


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(meta: Mapping[str, Any]) -> tuple[str, Callable[[Any], bool]] | None:
    """``(">= 1", test)`` or ``("in [0, 1)", test)`` for a field's bounds; None without."""
    low = ("[", meta["min"]) if "min" in meta else ("(", meta["above"]) if "above" in meta else None
    high = (
        ("]", meta["max"]) if "max" in meta else (")", meta["below"]) if "below" in meta else None
    )
    if low is None and high is None:
        return None

    def within(value: Any) -> bool:
        if low is not None and (value < low[1] if low[0] == "[" else value <= low[1]):
            return False
        return high is None or (value <= high[1] if high[0] == "]" else value < high[1])

    if low is not None and high is not None:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}", within
    if low is not None:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}", within
    assert high is not None
    return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}", within


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{names(f.name)} must be a finite number, got {value}")
    bounds = _bounds(meta)
    if bounds is not None and not bounds[1](value):
        raise ConfigError(f"{names(f.name)} must be {bounds[0]}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{names(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}"
        )


def _base_type(f: dataclasses.Field[Any]) -> str:
    """``"int"`` for ``int`` and ``int | None`` (annotations are strings here)."""
    return str(f.type).removesuffix(" | None")


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    try:
        return parse_value(_base_type(f), raw)
    except BadValue as exc:
        raise ConfigError(f"{names(f.name)} {exc}") from None


def _metavar(f: dataclasses.Field[Any]) -> str | None:
    if "choices" in f.metadata:
        # As argparse shows choices; the values are checked with the rest (env included).
        return "{" + ",".join(f.metadata["choices"]) + "}"
    return {"int": "N", "float": "X", "bool": "BOOL", "Path": "DIR", "str": "NAME"}.get(
        _base_type(f)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-train",
        description="Train the Fashion-MNIST CNN, export it to ONNX and publish a new version. "
        f"Every flag can also be set as an environment variable, {ENV_PREFIX}<FLAG> "
        f"({ENV_MODEL_REPO} and {ENV_DATA_DIR} for the two shared with other commands); "
        "the flag wins, and an architecture's recipe fills what neither sets.",
    )
    for f in _FIELDS.values():
        # A bool flag alone means true; it also takes a value (--no-report false).
        flag_only: dict[str, Any] = {"nargs": "?", "const": "true"} if f.type == "bool" else {}
        shown = f.metadata.get("shown", f.default)
        text = f"{f.metadata['help']} (env {variable(f.name)}, default {shown})"
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=_metavar(f),
            help=text.replace("%", "%%"),
            **flag_only,
        )
    return parser


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an unknown ``FASHION_TRAIN_*`` name, suggesting the setting it resembles.

    Kubernetes service links of a Service named ``fashion-train*`` are not settings and pass.
    """
    known = {variable(name) for name in _FIELDS if variable(name).startswith(ENV_PREFIX)}
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and not is_service_link(name, environ[name])
    )
    if not unknown:
        return
    # FASHION_TRAIN_<FLAG> of the two settings shared with other commands: the rule every
    # other flag follows, so the likeliest slip; their own variable is the one meant.
    shared = {
        f"{ENV_PREFIX}{name.upper()}": variable(name)
        for name in _FIELDS
        if not variable(name).startswith(ENV_PREFIX)
    }
    problems = []
    for name in unknown:
        close = shared.get(name) or closest_setting(name, known, ENV_PREFIX)
        hint = f"did you mean {close}?" if close else "fashion-train --help lists them"
        problems.append(f"unknown setting {name}; {hint}")
    raise ConfigError("; ".join(problems))


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> TrainConfig:
    """Flags, then variables, then recipe and defaults. Raises ConfigError (argparse's own
    usage errors, an unknown flag or a missing value, exit with status 2)."""
    given = vars(build_parser().parse_args(argv))
    check_environment(environ)
    values: dict[str, Any] = {}
    for name, f in _FIELDS.items():
        raw = given[name]
        if raw is None:
            raw = environ.get(variable(name)) or None  # empty = unset
        if raw is not None:
            values[name] = _convert(f, raw)
    return TrainConfig(**values)


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> TrainConfig:
    """:func:`load_config` for the command line: a bad setting exits with status 2 and
    ``fashion-train: error: <message>`` after the usage line."""
    try:
        return load_config(argv, environ)
    except ConfigError as exc:
        _usage_error(str(exc))


def _usage_error(message: str) -> NoReturn:
    build_parser().error(message)
