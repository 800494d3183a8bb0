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
from server.config_store import check_servable, read_config, servable_versions
from server.contract import METADATA_FILE, MODEL_FILE, MODEL_NAME
from server.repository import ModelLoadError, read_version, sha256_file
from tests.repos import configure, publish

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
    left = [p for p in pins if p.split("==")[0] in ("numpy", "pillow")]
    assert len(left) == 2 and sorted(wanted + left) == sorted(pins)
    assert "onnxruntime==1.31.1" in wanted  # the runtime measured here, not the device's
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


def test_the_model_copy_is_the_newest_version_alone_and_served(model_repo: Path, tmp_path: Path):
    """Labels naming an older version stay behind with config.json: the copy serves the
    newest version, checked as the server checks a repository at start."""
    source = tmp_path / "source"
    publish(model_repo, source, version=1)
    publish(model_repo, source, version=2)
    (source / MODEL_NAME / "2" / "report.md").write_text("the training report")
    configure(source, MODEL_NAME, {"version_policy": {"all": True}, "labels": {"stable": 1}})
    assert check_servable(
        read_config(source, MODEL_NAME), servable_versions(source, MODEL_NAME), MODEL_NAME
    ) == [1, 2]

    assert devkit.copy_model(source, tmp_path / "models") == 2
    copied = tmp_path / "models" / MODEL_NAME
    assert sorted(p.name for p in copied.iterdir()) == ["2"]  # no config.json, no version 1
    assert sorted(p.name for p in (copied / "2").iterdir()) == [METADATA_FILE, MODEL_FILE]
    read_version(tmp_path / "models", 2)  # the sha256 in metadata.json holds for the copy


def test_variant_files_named_in_metadata_travel_with_the_model(model_repo: Path, tmp_path: Path):
    source = tmp_path / "source"
    version = publish(model_repo, source, version=3)
    (version / "model.int8.onnx").write_bytes(b"int8 weights")
    variants = {
        "int8": {"file": "model.int8.onnx", "sha256": sha256_file(version / "model.int8.onnx")}
    }
    meta = json.loads((version / METADATA_FILE).read_text())
    (version / METADATA_FILE).write_text(json.dumps({**meta, "variants": variants}))
    devkit.copy_model(source, tmp_path / "models")
    assert (
        tmp_path / "models" / MODEL_NAME / "3" / "model.int8.onnx"
    ).read_bytes() == b"int8 weights"
    (version / "model.int8.onnx").write_bytes(b"changed")  # a copy that does not verify
    with pytest.raises(ModelLoadError, match="sha256"):
        devkit.copy_model(source, tmp_path / "again")


def test_a_repository_without_a_model_is_refused(tmp_path: Path):
    with pytest.raises(SystemExit, match="train or copy one first"):
        devkit.copy_model(tmp_path / "empty", tmp_path / "models")


def test_the_working_tree_leaves_room_for_the_kit():
    """Every device call sends the tree too: a tree grown past this breaks the scaling run."""
    tree = devkit.tree_bytes()
    assert 0 < tree
    assert tree + (KIT_MIB << 20) <= devkit.CALL_LIMIT_BYTES, f"tree {tree / 2**20:.1f} MiB"


def test_the_tree_digest_ties_a_device_run_to_the_kit(tmp_path: Path, monkeypatch):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "source.json").write_text(json.dumps({"commit": "abc1234", "tree_digest": "0" * 64}))
    assert not devkit.verify(kit, tmp_path / "out" / "source.json")  # packed from another tree
    record = json.loads((tmp_path / "out" / "source.json").read_text())
    assert record["commit"] == "abc1234" and record["tree_matches_kit"] is False
    (kit / "source.json").write_text(json.dumps({"tree_digest": devkit.tree_digest()}))
    assert devkit.main(["--kit", str(kit), "--verify", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["tree_matches_kit"] is True

    code = tmp_path / "tree"
    for top in devkit.CODE:
        (code / top).mkdir(parents=True) if "." not in top else (code / top).write_text("x")
    (code / "server" / "a.py").write_text("one")
    (code / "server" / "__pycache__").mkdir()
    (code / "server" / "__pycache__" / "a.pyc").write_bytes(b"compiled")
    first = devkit.tree_digest(code)
    (code / "server" / "__pycache__" / "a.pyc").write_bytes(b"recompiled")
    assert devkit.tree_digest(code) == first  # byte code is not the code
    (code / "server" / "a.py").write_text("two")
    assert devkit.tree_digest(code) != first


def test_a_kit_replaces_only_a_kit(tmp_path: Path):
    other = tmp_path / "models"
    other.mkdir()
    (other / "precious").write_text("not a kit")
    with pytest.raises(SystemExit, match="holds no kit"):
        devkit.main(["--kit", str(other)])
    assert (other / "precious").is_file()
    half = tmp_path / "half"  # a packing that broke off: its marker lets the next one in
    devkit._replace(half)
    (half / "wheels").mkdir()
    devkit._replace(half)
    assert [p.name for p in half.iterdir()] == [devkit.MARKER]
    assert "outside the repository" in devkit._carry_hint(tmp_path / "kit")
    assert "carry=['.devkit']" in devkit._carry_hint(devkit.ROOT / ".devkit")
    assert "KIT=bench-out/kit bash" in devkit._carry_hint(devkit.ROOT / "bench-out" / "kit")


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


def small_scaling(model_repo: Path, tmp_path: Path, workers: str, server_cores: str) -> list[str]:
    """bench.scaling's arguments for a short ours-only run on this machine's cores."""
    cpus = sorted(os.sched_getaffinity(0))
    return [
        "--model-repo",
        str(model_repo),
        "--no-pytriton",
        "--workers",
        workers,
        "--server-cores",
        server_cores,
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
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]


def test_scaling_ours_only_runs_without_onnx_surgery(model_repo: Path, tmp_path: Path):
    """What the device script runs, small: real servers, the real load generator."""
    cpus = sorted(os.sched_getaffinity(0))
    work, out = tmp_path / "work", tmp_path / "out"
    argv = small_scaling(model_repo, tmp_path, "1", str(cpus[0]))
    command = [sys.executable, "-m", "bench.scaling", *argv]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "scaling.json").read_text())
    assert list(results["servers"]) == ["fashion-serve --workers 1"]
    entry = results["servers"]["fashion-serve --workers 1"]
    assert entry["cores"] == 1 and entry["exit_code"] == 0
    assert [(p["size"], p["concurrency"]) for p in entry["points"]] == [(1, 64), (32, 16)]
    for point in entry["points"]:
        assert point["images_per_s"] > 0 and point["errors"] == 0 and point["bad_responses"] == 0
    assert not (work / "fashion-fp32.onnx").exists()  # PyTriton's copy: not made
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
    argv = small_scaling(model_repo, tmp_path, "1,2", f"{cpus[0]},{cpus[1]}")
    args = scaling.build_parser().parse_args(argv)
    args.perf_analyzer = False
    with pytest.raises(RuntimeError, match="did not start"):
        scaling.run(args, argv)
    assert sorted(os.sched_getaffinity(0)) == cpus
    kept = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert list(kept["servers"]) == ["fashion-serve --workers 1"]
    assert kept["growth"] == {"fashion-serve --workers 1": [1.0, 1.0]}
