"""server.cgroup: the memory limit from cgroup v2 and v1 trees laid out as the kernel does."""

from __future__ import annotations

from pathlib import Path

from server.cgroup import machine_memory_bytes, memory_limit_bytes

GIB = 1024**3
V1_NO_LIMIT = "9223372036854771712"


def machine(tmp_path: Path, *, cgroup: str, meminfo_kb: int = 16 * 1024 * 1024) -> dict:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(cgroup)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {meminfo_kb} kB\nMemFree:         1234 kB\n")
    return {"root": tmp_path / "cgroup", "proc_self_cgroup": proc, "meminfo": meminfo}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_v2_in_a_container_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    paths = machine(tmp_path, cgroup="0::/\n")
    write(paths["root"] / "memory.max", str(GIB))
    assert memory_limit_bytes(**paths) == GIB


def test_v2_without_a_namespace_follows_the_process_path_and_its_ancestors(tmp_path: Path) -> None:
    paths = machine(tmp_path, cgroup="0::/kubepods/pod1/ctr\n")
    write(paths["root"] / "kubepods" / "pod1" / "ctr" / "memory.max", "max")
    write(paths["root"] / "kubepods" / "pod1" / "memory.max", str(2 * GIB))
    write(paths["root"] / "kubepods" / "memory.max", str(8 * GIB))
    assert memory_limit_bytes(**paths) == 2 * GIB  # the tightest ancestor binds


def test_v1_memory_controller_and_its_no_limit_value(tmp_path: Path) -> None:
    paths = machine(tmp_path, cgroup="4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(paths["root"] / "memory" / "memory.limit_in_bytes", V1_NO_LIMIT)
    write(paths["root"] / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(GIB // 2))
    assert memory_limit_bytes(**paths) == GIB // 2


def test_no_limit_anywhere_is_the_machines_memory(tmp_path: Path) -> None:
    paths = machine(tmp_path, cgroup="4:memory:/x\n0::/\n", meminfo_kb=4 * 1024 * 1024)
    write(paths["root"] / "memory" / "memory.limit_in_bytes", V1_NO_LIMIT)
    write(paths["root"] / "memory.max", "max")
    assert memory_limit_bytes(**paths) == 4 * GIB


def test_a_limit_above_the_machines_memory_is_the_machines_memory(tmp_path: Path) -> None:
    paths = machine(tmp_path, cgroup="0::/\n", meminfo_kb=1024 * 1024)
    write(paths["root"] / "memory.max", str(64 * GIB))
    assert memory_limit_bytes(**paths) == GIB


def test_nothing_readable_is_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert memory_limit_bytes(missing, missing, missing) is None
    assert machine_memory_bytes(missing) is None


def test_this_machine_has_an_answer() -> None:
    limit = memory_limit_bytes()
    assert limit is not None and limit > 0


def test_the_supervisor_imports_neither_grpc_nor_onnxruntime() -> None:
    """--workers: the supervisor starts workers before anything heavy is loaded (NOTES:
    start workers before the parent imports grpc), and stays small (no model, no numpy)."""
    import subprocess
    import sys

    code = (
        "import sys, server.supervisor; "
        "print(sorted(m for m in ('grpc', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
