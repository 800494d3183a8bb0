"""``python -m bench.devkit``: pack what ``bench.scaling`` needs on a lent device machine.

The 16-core machine this workplace lends now and then (docs/PERFORMANCE.md, "Bigger nodes")
reaches no package registry. Its Python 3.12 holds numpy, pillow and onnx but not our
serving pins, and a call carries the working tree plus at most 64 MiB in all. So, here,
before a device is in hand:

    python -m bench.devkit --model-repo models        # writes .devkit/ (git ignores it)

downloads the serving dependencies of ``pyproject.toml`` as CPython 3.12 x86-64 wheels
(except what the device already has: ``PROVIDED``), copies the newest model version, and
records the commit. Then one device call, with ``carry: [".devkit"]``:

    bash bench/device_scaling.sh

installs the wheels into a folder of its own and runs ``bench.scaling`` there; its tables
land in ``$OUT/scaling``. The size of tree plus kit is checked here, not discovered there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from bench.cli import git_state
from server.contract import CONFIG_FILE, MODEL_NAME
from server.repository import latest_version, model_dir, read_version

ROOT = Path(__file__).resolve().parents[1]
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
    """The newest version of the model (its model files, not the training report's images)."""
    version = latest_version(model_repo)
    if version is None:
        raise SystemExit(f"{model_repo} has no version of {MODEL_NAME!r}: train or copy one first")
    source = read_version(model_repo, version).path
    target = model_dir(dest, MODEL_NAME) / str(version)
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.suffix not in {".png", ".md"}:
            shutil.copy2(item, target / item.name)
    config = model_dir(model_repo, MODEL_NAME) / CONFIG_FILE
    if config.is_file():
        shutil.copy2(config, target.parent / CONFIG_FILE)
    read_version(dest, version)  # the copy verifies as the server will verify it
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


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.devkit", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--out", type=Path, default=ROOT / ".devkit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)  # never a mix of two packings
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True)
    version = copy_model(args.model_repo, args.out / "models")
    requirements = serving_requirements(ROOT / "pyproject.toml")
    subprocess.run(download_command(requirements, wheels), check=True)
    dropped = drop_provided(wheels)
    source = {**git_state(), "model_version": version, "requirements": requirements}
    (args.out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    kit, tree = folder_bytes(args.out), tree_bytes()
    print(f"{args.out}: {kit / 2**20:.1f} MiB ({len(list(wheels.glob('*.whl')))} wheels)")
    print(f"the working tree: {tree / 2**20:.1f} MiB; a call carries {CALL_LIMIT_BYTES >> 20} MiB")
    if dropped:
        print(f"left to the device's own Python: {', '.join(dropped)}")
    if kit + tree > CALL_LIMIT_BYTES:
        print("too big for one device call: leave more to the device (PROVIDED)", file=sys.stderr)
        return 1
    print(
        f"then: run(command='bash bench/device_scaling.sh', carry=['{args.out.name}'], "
        "timeout_s=360); about 2 minutes there"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
