"""The device kit (bench.devkit, bench/device_scaling.sh) and the ours-only scaling run it makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench import devkit
from server.contract import CONFIG_FILE, METADATA_FILE, MODEL_FILE, MODEL_NAME
from server.repository import latest_version, read_version

ROOT = Path(__file__).resolve().parents[2]
# The kit measured on 2026-12-07: 34.4 MiB of wheels and a 1 MiB model (docs/PERFORMANCE.md).
KIT_MIB = 36


def test_requirement_names_are_normalised():
    assert devkit.requirement_name("grpcio-health-checking==1.80.1") == "grpcio-health-checking"
    assert devkit.requirement_name("Typing_Extensions>=4") == "typing-extensions"
    assert devkit.requirement_name("pillow") == "pillow"
    with pytest.raises(ValueError):
        devkit.requirement_name("==1.0")


def test_the_kit_holds_every_serving_pin_but_what_the_device_provides():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = devkit.serving_requirements(ROOT / "pyproject.toml")
    assert wanted == [p for p in pins if devkit.requirement_name(p) not in devkit.PROVIDED]
    assert "onnxruntime==1.31.1" in wanted  # the runtime measured here, not the device's
    assert not any(devkit.requirement_name(p) in {"numpy", "pillow"} for p in wanted)
    command = devkit.download_command(wanted, Path("/tmp/w"))
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in command and command[-len(wanted) :] == wanted


def test_wheels_of_provided_packages_are_dropped(tmp_path: Path):
    for name in (
        "numpy-2.5.5-cp312-cp312-manylinux_2_28_x86_64.whl",
        "Pillow-13.0.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "grpcio-1.85.1-cp312-cp312-manylinux2014_x86_64.whl",
    ):
        (tmp_path / name).write_bytes(b"")
    dropped = devkit.drop_provided(tmp_path)
    assert len(dropped) == 2
    assert [p.name for p in tmp_path.iterdir()] == [
        "grpcio-1.85.1-cp312-cp312-manylinux2014_x86_64.whl"
    ]


def test_the_model_copy_is_the_newest_version_and_verifies(model_repo: Path, tmp_path: Path):
    version = devkit.copy_model(model_repo, tmp_path / "models")
    assert version == latest_version(model_repo)
    copied = read_version(tmp_path / "models", version)  # checks the sha256 in metadata.json
    names = {p.name for p in copied.path.iterdir()}
    assert {MODEL_FILE, METADATA_FILE} <= names
    assert not any(n.endswith((".png", ".md")) for n in names)  # the report stays behind
    config = model_repo / MODEL_NAME / CONFIG_FILE
    assert (tmp_path / "models" / MODEL_NAME / CONFIG_FILE).is_file() == config.is_file()


def test_a_repository_without_a_model_is_refused(tmp_path: Path):
    with pytest.raises(SystemExit, match="train or copy one first"):
        devkit.copy_model(tmp_path / "empty", tmp_path / "models")


def test_the_working_tree_leaves_room_for_the_kit():
    """Every device call sends the tree too: a tree grown past this breaks the scaling run."""
    tree = devkit.tree_bytes()
    assert 0 < tree
    assert tree + (KIT_MIB << 20) <= devkit.CALL_LIMIT_BYTES, f"tree {tree / 2**20:.1f} MiB"


def test_the_device_script_refuses_to_start_without_a_kit(tmp_path: Path):
    script = ROOT / "bench" / "device_scaling.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(
        ["bash", str(script)],
        cwd=ROOT,
        env={**os.environ, "KIT": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "python -m bench.devkit" in done.stderr


def test_scaling_ours_only_runs_without_onnx_surgery(model_repo: Path, tmp_path: Path):
    """What the device script runs, small: real servers, the real load generator."""
    cpus = sorted(os.sched_getaffinity(0))
    work, out = tmp_path / "work", tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "bench.scaling",
        "--model-repo",
        str(model_repo),
        "--no-pytriton",
        "--workers",
        "1",
        "--server-cores",
        str(cpus[0]),
        "--client-cores",
        ",".join(map(str, cpus)),
        "--processes",
        "1",
        "--connections",
        "2",
        "--duration-s",
        "1",
        "--warmup-s",
        "0.3",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "scaling.json").read_text())
    assert list(results["servers"]) == ["fashion-serve --workers 1"]
    entry = results["servers"]["fashion-serve --workers 1"]
    assert entry["cores"] == 1 and entry["exit_code"] == 0
    assert [(p["size"], p["concurrency"]) for p in entry["points"]] == [(1, 64), (32, 16)]
    for point in entry["points"]:
        assert point["images_per_s"] > 0 and point["errors"] == 0 and point["bad_responses"] == 0
    assert not (work / "fashion-fp32.onnx").exists()  # PyTriton's copy: not made, no onnx
    assert results["growth"] == {"fashion-serve --workers 1": [1.0, 1.0]}
    assert "| fashion-serve --workers 1 | 1 |" in (out / "scaling.md").read_text()


def test_scaling_keeps_what_it_measured_when_a_later_server_fails(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A lent machine's run may not be repeatable: each finished server is written at once,
    and this process's CPU affinity is given back even when the run breaks off."""
    from bench import scaling

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("two server counts need two cores")
    real, started = scaling.start_server, []

    def start_server(repo: Path, extra: list[str]):
        started.append(extra)
        if len(started) == 2:  # the second server (--workers 2) does not come up
            raise RuntimeError("did not start")
        return real(repo, extra)

    monkeypatch.setattr(scaling, "start_server", start_server)
    argv = [
        "--model-repo",
        str(model_repo),
        "--no-pytriton",
        "--workers",
        "1,2",
        "--server-cores",
        f"{cpus[0]},{cpus[1]}",
        "--client-cores",
        ",".join(map(str, cpus)),
        "--processes",
        "1",
        "--connections",
        "2",
        "--duration-s",
        "0.5",
        "--warmup-s",
        "0.2",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]
    args = scaling.build_parser().parse_args(argv)
    args.perf_analyzer = False
    with pytest.raises(RuntimeError, match="did not start"):
        scaling.run(args, argv)
    assert sorted(os.sched_getaffinity(0)) == cpus
    kept = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert list(kept["servers"]) == ["fashion-serve --workers 1"]
    assert kept["growth"] == {"fashion-serve --workers 1": [1.0, 1.0]}
