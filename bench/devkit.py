"""``python -m bench.devkit``: pack what ``bench.scaling`` needs on a lent device machine.

The 16-core machine this workplace lends now and then (docs/PERFORMANCE.md, "Bigger nodes")
reaches no package registry. Its Python 3.12 holds numpy, pillow and onnx but not our
serving pins, and a call carries the working tree plus at most 64 MiB in all. So, here,
before a device is in hand:

    python -m bench.devkit --model-repo models        # writes .devkit/ (git ignores it)

downloads the serving dependencies of ``pyproject.toml`` as CPython 3.12 x86-64 wheels
(except what the device already has: ``PROVIDED``), copies the newest model version, and
records the commit with a digest of the code (``CODE``). Then one device call, with
``carry: [".devkit"]``:

    bash bench/device_scaling.sh

installs the wheels into a folder of its own, checks with ``--verify`` that the tree sent
is the one packed (the device's copy has no .git), and runs ``bench.scaling`` there; its
tables land in ``$OUT/scaling``. The size of tree plus kit is checked here, not discovered
there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from bench.cli import git_state
from server.config_store import check_servable, read_config, servable_versions
from server.contract import METADATA_FILE, MODEL_FILE, MODEL_NAME
from server.repository import FLOAT_VARIANT, latest_version, model_dir, read_version

ROOT = Path(__file__).resolve().parents[1]
# The code a scaling run executes: what the kit's commit label must vouch for.
CODE = ("server", "bench", "client", "protos", "pyproject.toml")
MARKER = "KIT"  # the first file of a kit: what --kit may replace
# What a call may carry, the working tree included (the device tool's limit).
CALL_LIMIT_BYTES = 64 << 20
# Serving dependencies the device's own Python already has: big wheels (numpy alone is
# 16 MiB) whose versions there are close enough to ours. Everything else is our pin.
PROVIDED = frozenset({"numpy", "pillow"})
PYTHON_VERSION = "3.12"  # the device's python3 (its KINDS.md: 3.12.3)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)


def requirement_name(requirement: str) -> str:
    """``grpcio-health-checking==1.80.1`` -> ``grpcio-health-checking`` (normalised)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def serving_requirements(pyproject: Path, provided: frozenset[str] = PROVIDED) -> list[str]:
    """The base install's pins (the server only), less what the device provides."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [r for r in dependencies if requirement_name(r) not in provided]


def download_command(requirements: Sequence[str], dest: Path) -> list[str]:
    """pip download of CPython 3.12 x86-64 wheels, their dependencies resolved for it."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        *platforms,
        "--dest",
        str(dest),
        *requirements,
    ]


def drop_provided(wheels: Path, provided: frozenset[str] = PROVIDED) -> list[str]:
    """Remove wheels of provided packages that pip fetched as dependencies; their names."""
    dropped = []
    for wheel in sorted(wheels.glob("*.whl")):
        name = requirement_name(wheel.name.split("-", 1)[0])
        if name in provided:
            wheel.unlink()
            dropped.append(wheel.name)
    return dropped


def copy_model(model_repo: Path, dest: Path) -> int:
    """The newest version of the model: its model files, metadata and variants, not the
    training report. The repository's config.json stays behind (its labels or version
    policy may name versions not carried): the copy serves that one version, checked
    here as the server will check it."""
    version = latest_version(model_repo)
    if version is None:
        raise SystemExit(f"{model_repo} has no version of {MODEL_NAME!r}: train or copy one first")
    source = read_version(model_repo, version)
    variants = source.metadata.get("variants") or {}
    names = {MODEL_FILE, METADATA_FILE, *(Path(v["file"]).name for v in variants.values())}
    target = model_dir(dest, MODEL_NAME) / str(version)
    target.mkdir(parents=True)
    for name in sorted(names):
        shutil.copy2(source.path / name, target / name)
    for variant in (FLOAT_VARIANT, *variants):
        read_version(dest, version, variant=variant)  # each checksum as metadata.json says
    served = check_servable(
        read_config(dest, MODEL_NAME), servable_versions(dest, MODEL_NAME), MODEL_NAME
    )
    if served != [version]:  # one version and no config: served, unless the defaults change
        raise SystemExit(f"the copy would serve {served}, not version {version}")
    return version


def tree_bytes(root: Path = ROOT) -> int:
    """What every device call sends: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    paths = {root / name for name in listed.decode().split("\0") if name}
    return sum(p.stat().st_size for p in paths if p.is_file())


def tree_digest(root: Path = ROOT) -> str:
    """sha256 of the code a run executes (``CODE``), by path and content: the device's copy
    of the tree has no .git, so this is how its results are tied to the commit packed."""
    digest = hashlib.sha256()
    for top in CODE:
        base = root / top
        files = sorted(base.rglob("*")) if base.is_dir() else [base]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def verify(kit: Path, record: Path) -> bool:
    """On the device: does the tree sent match the one the kit was packed from? The kit's
    source.json, with the answer, is written to ``record`` beside the results."""
    source = json.loads((kit / "source.json").read_text())
    source["tree_digest_here"] = tree_digest()
    source["tree_matches_kit"] = source["tree_digest_here"] == source["tree_digest"]
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(source, indent=2) + "\n")
    return bool(source["tree_matches_kit"])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.devkit", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--kit", type=Path, default=ROOT / ".devkit", help="the kit's folder")
    p.add_argument(
        "--verify",
        type=Path,
        metavar="RECORD",
        help="(on the device) compare the tree with the kit's and write its source there",
    )
    return p


def _replace(out: Path) -> None:
    """Empty ``out`` for a new kit: never a mix of two packings, never another folder (a
    kit, even a half-packed one, is known by its ``MARKER``)."""
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise SystemExit(f"{out} is not empty and holds no kit: choose another --kit")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("packed by python -m bench.devkit (docs/PERFORMANCE.md)\n")


def _carry_hint(out: Path) -> str:
    try:
        carried = out.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return f"{out} is outside the repository: a device call carries only paths inside it"
    kit = "" if carried == ".devkit" else f"KIT={carried} "
    return (
        f"then: run(command='{kit}bash bench/device_scaling.sh', carry=['{carried}'], "
        "timeout_s=360), about 2 minutes there; pack again after any commit before the call"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verify:
        if verify(args.kit, args.verify):
            return 0
        print(
            f"the tree differs from the one {args.kit} was packed from: its commit label "
            "does not hold for this run (tree_matches_kit: false in the record)",
            file=sys.stderr,
        )
        return 3
    _replace(args.kit)
    wheels = args.kit / "wheels"
    wheels.mkdir()
    version = copy_model(args.model_repo, args.kit / "models")
    requirements = serving_requirements(ROOT / "pyproject.toml")
    subprocess.run(download_command(requirements, wheels), check=True)
    dropped = drop_provided(wheels)
    source = {
        **git_state(),
        "tree_digest": tree_digest(),
        "model_version": version,
        "requirements": requirements,
    }
    (args.kit / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    kit, tree = folder_bytes(args.kit), tree_bytes()
    print(f"{args.kit}: {kit / 2**20:.1f} MiB ({len(list(wheels.glob('*.whl')))} wheels)")
    print(f"the working tree: {tree / 2**20:.1f} MiB; a call carries {CALL_LIMIT_BYTES >> 20} MiB")
    if dropped:
        print(f"left to the device's own Python: {', '.join(dropped)}")
    if kit + tree > CALL_LIMIT_BYTES:
        print("too big for one device call: leave more to the device (PROVIDED)", file=sys.stderr)
        return 1
    print(_carry_hint(args.kit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
