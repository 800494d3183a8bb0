"""``fashion-repo``: look at a model repository and change what its models serve.

    fashion-repo --model-repo models list [MODEL] [--json]
    fashion-repo --model-repo models label MODEL LABEL VERSION
    fashion-repo --model-repo models unlabel MODEL LABEL
    fashion-repo --model-repo models promote MODEL [--label canary]
    fashion-repo --model-repo models rollback MODEL
    fashion-repo --model-repo models policy MODEL latest:2|all|specific:3,4

``list`` shows every model: its version policy, labels and the stable history, each
published version (intact or why not, the test accuracy its training recorded, its labels)
and what a server would serve (the versions and the default). The other commands change
``<model>/config.json`` through :func:`server.config_store.update`: one writer at a time,
checked as the server checks it (a label must name a version the policy serves), written
atomically. A running server applies the change at its next poll (``--poll-interval-s``)
or on SIGHUP; in ``--model-control-mode explicit``, at the model's next load.

``promote`` moves ``stable`` to the canary's version (the canary label stays, so its
clients are never refused), recording the previous stable; ``rollback`` returns ``stable``
to it. Exit status: 0 done, 1 refused (the message says why; nothing was written), 2 a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.config_store import (
    Versions,
    check_model,
    check_servable,
    read_config,
    servable_versions,
    update,
)
from server.errors import ModelLoadError
from server.repository import scan_models
from server.serving_config import (
    CANARY,
    STABLE,
    ConfigRefused,
    ServingConfig,
    check_label_name,
    parse_policy,
)

APPLIES = (
    "a server applies it at its next poll or on SIGHUP (--model-control-mode explicit: at "
    "the model's next load)"
)


def describe_model(root: Path, model: str) -> dict[str, Any]:
    """What ``list`` shows of one model, as JSON-able data."""
    versions = servable_versions(root, model)
    entry: dict[str, Any] = {"config_error": None}
    served: list[int] = []
    try:
        config = read_config(root, model)
    except ConfigRefused as exc:
        # A running server keeps the config it had; a starting one serves nothing of it.
        entry["config_error"] = str(exc)
        config = ServingConfig()
    else:
        try:
            if versions.numbers:  # else "no version published" says it all
                served = check_servable(config, versions, model)
        except ConfigRefused as exc:
            # A label the policy does not serve (e.g. a version copied in by hand pushed it
            # out): a server refuses the file as it refuses a malformed one.
            entry["config_error"] = str(exc)
    labelled: dict[int, list[str]] = {}
    for label, version in sorted(config.labels.items()):
        labelled.setdefault(version, []).append(label)
    entry.update(
        version_policy=config.policy.describe(),
        labels=dict(sorted(config.labels.items())),
        stable_history=list(config.stable_history),
        served=served,
        default_version=config.default_version(served) if served else None,
        versions=[_describe_version(versions, v, served, labelled) for v in _all(versions)],
    )
    return entry


def _all(versions: Versions) -> list[int]:
    return sorted({*versions.intact, *versions.broken})


def _describe_version(
    versions: Versions, number: int, served: list[int], labelled: dict[int, list[str]]
) -> dict[str, Any]:
    intact = versions.intact.get(number)
    accuracy = intact.metadata.get("test_accuracy") if intact else None
    return {
        "version": number,
        "intact": intact is not None,
        "error": versions.broken.get(number),
        "served": number in served,
        "labels": labelled.get(number, []),
        "test_accuracy": accuracy if isinstance(accuracy, (int, float)) else None,
    }


def render_text(models: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, model in models.items():
        labels = ", ".join(f"{k} -> {v}" for k, v in model["labels"].items()) or "none"
        default = model["default_version"]
        lines.append(
            f"{name}: policy {model['version_policy']}; labels {labels}; serves "
            f"{model['served'] or 'nothing'}, default {default if default else 'none'}"
            + (f"; stable before: {model['stable_history']}" if model["stable_history"] else "")
        )
        if model["config_error"]:
            lines.append(f"  config.json refused (a running server keeps its previous config, "
                         f"a starting one serves nothing of {name}): "
                         f"{model['config_error']}")  # fmt: skip
        lines.append(f"  {'version':>7}  {'served':<6}  {'test accuracy':<13}  labels / state")
        for v in model["versions"]:
            accuracy = v["test_accuracy"]
            state = ", ".join(v["labels"]) if v["intact"] else f"broken: {v['error']}"
            lines.append(
                f"  {v['version']:>7}  {'yes' if v['served'] else '-':<6}  "
                f"{f'{accuracy:.4f}' if accuracy is not None else '-':<13}  {state}"
            )
        if not model["versions"]:
            lines.append("  (no version published)")
    return "\n".join(lines) if lines else "no model in the repository"


def _list(root: Path, args: argparse.Namespace) -> int:
    if args.model:
        check_model(root, args.model)
    names = [args.model] if args.model else scan_models(root).models
    models = {name: describe_model(root, name) for name in names}
    print(json.dumps({"models": models}, indent=2) if args.json else render_text(models))
    return 0


def _changed(model: str, before: ServingConfig, after: ServingConfig) -> str:
    def show(config: ServingConfig) -> str:
        labels = ", ".join(f"{k} -> {v}" for k, v in sorted(config.labels.items())) or "none"
        return f"policy {config.policy.describe()}, labels {labels}"

    return f"{model}: {show(before)}  =>  {show(after)}; {APPLIES}"


def _change(root: Path, args: argparse.Namespace) -> int:
    if args.command == "label":
        check_label_name(args.label)
        before, after = update(root, args.model, lambda c: c.with_label(args.label, args.version))
    elif args.command == "unlabel":
        before, after = update(root, args.model, lambda c: c.without_label(args.label))
    elif args.command == "promote":
        before, after = update(root, args.model, lambda c: c.promoted(args.label))
    elif args.command == "rollback":
        before, after = update(root, args.model, lambda c: c.rolled_back())
    else:  # policy
        policy = parse_policy(args.policy)
        before, after = update(root, args.model, lambda c: c.with_policy(policy))
    print(_changed(args.model, before, after))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fashion-repo",
        description="Look at a model repository and change what its models serve "
        "(version policy, labels, promote, rollback).",
    )
    p.add_argument(
        "--model-repo",
        type=Path,
        default=Path(os.environ.get("FASHION_MODEL_REPO", "models")),
        help="model repository root (default: $FASHION_MODEL_REPO, else ./models)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="models, versions, labels and what a server serves")
    listing.add_argument("model", nargs="?", help="only this model")
    listing.add_argument("--json", action="store_true", help="as JSON")
    label = sub.add_parser("label", help="point LABEL at VERSION (moving stable records it)")
    label.add_argument("model")
    label.add_argument("label")
    label.add_argument("version", type=int)
    unlabel = sub.add_parser("unlabel", help="remove LABEL")
    unlabel.add_argument("model")
    unlabel.add_argument("label")
    promote = sub.add_parser("promote", help=f"{STABLE} moves to the canary's version")
    promote.add_argument("model")
    promote.add_argument("--label", default=CANARY, help=f"the label to promote ({CANARY})")
    rollback = sub.add_parser("rollback", help=f"{STABLE} returns to the previous {STABLE}")
    rollback.add_argument("model")
    policy = sub.add_parser("policy", help="set the version policy: latest:N, all, specific:V,…")
    policy.add_argument("model")
    policy.add_argument("policy")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root: Path = args.model_repo
    if not root.is_dir():
        print(f"fashion-repo: {root} is not a directory (--model-repo)", file=sys.stderr)
        return 2
    try:
        return _list(root, args) if args.command == "list" else _change(root, args)
    except (ConfigRefused, ModelLoadError) as exc:
        print(f"fashion-repo: refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fashion-repo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
