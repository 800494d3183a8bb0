"""README.md and the docs pages it leads to, read as a new user reads them: their commands
run and say what the code does.

- README.md opens with exactly the two commands (the second is what ``.ci/run`` runs) and
  stays short; every link in README.md, docs/*.md, deploy/README.md and examples/README.md
  reaches a file that exists and, with ``#anchor``, a heading or ``id`` in it.
- Every shell command and Python block of the calling sections (README "Calling the
  server", docs/API.md "Calling the server", docs/OPERATIONS.md "Metrics") runs, as written,
  against a ``fashion-serve`` started the way ``scripts/up.sh`` starts it (its ``FASHION_*``
  variables set), from a shell whose PATH lacks the venv until the section's own ``source``
  line. Only the gRPC, REST and metrics addresses and the venv path are substituted. Outputs
  are checked against what the prose says they print, and every kind of call is there.
- Everything those blocks import or call is installed by the extras ``up.sh`` installs.
- ``fashion-train``'s synopsis (docs/TRAINING.md) and ``fashion-serve``'s flag table
  (docs/SERVING.md) match their ``--help``; every ``--flag`` that README.md or a docs page
  gives any ``fashion-*`` command exists.
- The quoted training results are the published runs' reports, and no page but
  docs/TRAINING.md quotes a training time.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from bench.serverproc import READY_MARK, ServerProcess, start_process

ROOT = Path(__file__).resolve().parents[2]
README_PAGE = "README.md"
DOCS = (
    "docs/SERVING.md",
    "docs/API.md",
    "docs/TRAINING.md",
    "docs/OPERATIONS.md",
    "docs/DEVELOPMENT.md",
)
# README.md and the pages that took over its reference sections.
PAGES = {page: (ROOT / page).read_text() for page in (README_PAGE, *DOCS)}
README = PAGES[README_PAGE]
README_MAX_LINES = 160  # ten minutes of reading; the rest lives in docs/
THE_TWO_COMMANDS = ["./scripts/up.sh", "./scripts/test.sh"]
# Pages whose links must resolve (beside README.md and docs/*.md).
LINKED_PAGES = ("deploy/README.md", "examples/README.md")
BIN = Path(sys.executable).parent  # the venv the suite runs in (.venv under scripts/test.sh)
# The sections whose commands a reader runs against the server up.sh started.
CALLING = (
    (README_PAGE, "Calling the server"),
    ("docs/API.md", "Calling the server"),
    ("docs/OPERATIONS.md", "Metrics"),
)
TRAIN_SYNOPSIS = ("docs/TRAINING.md", "`fashion-train`")
SERVE_FLAGS = ("docs/SERVING.md", "Flags")
RESULTS_PAGE = "docs/TRAINING.md"
DEFAULT_TARGET, DEFAULT_METRICS = "127.0.0.1:50051", "127.0.0.1:9090"
DEFAULT_HTTP = "127.0.0.1:8000"  # the REST API
COMMANDS = ("fashion-train", "fashion-serve", "fashion-predict", "fashion-inspect")
# The published runs whose figures docs/TRAINING.md (and README "Results") quote.
REPORTS = {
    "course_cnn": "docs/training/course_cnn_v2/report.md",
    "bn_cnn": "docs/training/bn_cnn/report.md",
}


def section(page: str, title: str, level: str = "##") -> str:
    """The text under ``page``'s first heading starting with ``title``, to the next such heading."""
    pattern = rf"^{level} {re.escape(title)}.*?$(.*?)(?=^{level} |\Z)"
    match = re.search(pattern, PAGES[page], re.M | re.S)
    assert match, f"{page} has no '{level} {title}' section"
    return match.group(1)


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def shell_commands(block: str) -> list[str]:
    """One entry per command: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class Call:
    """One shell command of a calling section, with the section's set-up lines."""

    page: str
    prelude: tuple[str, ...]
    command: str

    def __str__(self) -> str:
        return f"{self.page}: {self.command[:60]}"


def calling_commands() -> list[Call]:
    """Every command of every calling section, each with its section's ``source`` lines."""
    calls = []
    for page, title in CALLING:
        prelude, commands = [], []
        for block in fenced(section(page, title), "bash"):
            for command in shell_commands(block):
                (prelude if command.startswith("source ") else commands).append(command)
        calls += [Call(page, tuple(prelude), command) for command in commands]
    return calls


CALLS = calling_commands()
PYTHON_BLOCKS = [b for page, title in CALLING for b in fenced(section(page, title), "python")]
# What the calling sections say about the output of their commands.
CALLING_PROSE = "\n".join(section(page, title) for page, title in CALLING)


def kind(command: str) -> str:
    """Which call a command is, as :func:`check_output` tells them apart."""
    if f"{DEFAULT_HTTP}/v2" in command:
        if command.endswith("/infer"):
            return "REST infer"
        return "REST ready" if "/health/ready" in command else "REST metadata"
    if command.startswith("curl "):
        return "metrics"
    for flag in ("--list", "--evaluate", "--info", "--top-k"):
        if flag in command:
            return flag
    if "--call" in command:
        return "--call " + command.split("--call ")[1].split()[0]
    return "image files"


# Every kind of call the README offered before its reference moved to docs/; none may go.
KINDS = {
    "image files",
    "--top-k",
    "--evaluate",
    "--info",
    "--list",
    "--call grpc.health.v1.Health/Check",
    "--call fashion.v1.PredictionService/Predict",
    "--call inference.GRPCInferenceService/ModelMetadata",
    "REST ready",
    "REST metadata",
    "REST infer",
    "metrics",
}


def test_the_calling_sections_have_every_call_to_run() -> None:
    assert sorted({kind(call.command) for call in CALLS}) == sorted(KINDS)
    assert len(PYTHON_BLOCKS) == 1
    for call in CALLS:
        if call.command.startswith("fashion-predict"):
            assert DEFAULT_TARGET in call.command, call
        if call.command.startswith(COMMANDS):
            assert call.prelude == ("source .venv/bin/activate",), call


def test_the_readme_calls_each_protocol_once() -> None:
    """One short example each: our gRPC API, the OIP over gRPC, the OIP over REST."""
    readme = [call.command for call in CALLS if call.page == README_PAGE]
    assert [kind(c) for c in readme] == ["image files", "REST infer"], readme
    (block,) = fenced(section(README_PAGE, "Calling the server"), "python")
    assert "tritonclient.grpc" in block


def test_the_readme_opens_with_the_two_commands() -> None:
    before, first = re.split(r"^```\w*\n", README, maxsplit=1, flags=re.M)
    assert not re.search(r"^##", before, re.M), "a section comes before the two commands"
    block = first.split("\n```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands == THE_TWO_COMMANDS
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert THE_TWO_COMMANDS[1] in [line.strip() for line in ci], ".ci/run must run the tests"


def test_the_readme_is_short() -> None:
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


# --- links -------------------------------------------------------------------------------


def without_code(text: str) -> str:
    """The prose: no fenced blocks, inline code or HTML comments."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    text = path.read_text()
    found: set[str] = set(re.findall(r"""\bid=["']([^"']+)["']""", text))
    seen: dict[str, int] = {}
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", prose, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(f"{base}-{count}" if count else base)
    return found


def linked_pages() -> list[str]:
    docs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    return [README_PAGE, *docs, *LINKED_PAGES]


@pytest.mark.parametrize("page", linked_pages())
def test_every_link_resolves(page: str) -> None:
    source = ROOT / page
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(source.read_text()))
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no such heading")
    assert broken == []
    assert targets or page in LINKED_PAGES, "no links found: is the pattern broken?"


# --- a server started as up.sh starts it ------------------------------------------------


@pytest.fixture(scope="module")
def served(model_repo: Path) -> Iterator[ServerProcess]:
    # up.sh: FASHION_VENV (bootstrap.sh's) stays in the environment, FASHION_MODEL_REPO is
    # exported, and fashion-serve is exec'd from the venv; the server must accept both.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FASHION_VENV", str(BIN.parent))
        env.setenv("FASHION_MODEL_REPO", str(model_repo))
        command = [str(BIN / "fashion-serve"), "--model-repo", str(model_repo)]
        ports = ["--port", "0", "--metrics-port", "0", "--http-port", "0"]
        ports += ["--log-level", "warning"]
        server = start_process([*command, *ports], READY_MARK, timeout_s=120)
    yield server
    assert server.stop() == 0


def user_shell_env() -> dict[str, str]:
    """A second terminal: the venv is not on PATH until the README's ``source`` line."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != BIN]
    env["PATH"] = os.pathsep.join(path)
    return env


def localize(text: str, server: ServerProcess) -> str:
    text = text.replace(DEFAULT_TARGET, server.target)
    text = text.replace(DEFAULT_METRICS, f"127.0.0.1:{server.metrics_port}")
    text = text.replace(DEFAULT_HTTP, f"127.0.0.1:{server.http_port}")
    return text.replace(".venv/bin/activate", shlex.quote(str(BIN / "activate")))


def run_shell(call: Call, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    script = "\n".join(["set -euo pipefail", *call.prelude, call.command])
    return subprocess.run(
        ["bash", "-c", localize(script, server)],
        cwd=ROOT,
        env=user_shell_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def documented_keys(lead: str) -> set[str]:
    """The JSON keys the prose says a command prints: ``<lead>` prints `{"a", "b"}`."""
    match = re.search(re.escape(lead) + r"`\s+prints\s+`\{([^}]*)\}`", CALLING_PROSE)
    assert match, f"the calling sections no longer say what {lead} prints"
    return set(re.findall(r'"(\w+)"', match.group(1)))


def check_output(command: str, out: str, model_repo: Path) -> None:
    """What the README says each kind of command prints."""
    lines = out.splitlines()
    if f"{DEFAULT_HTTP}/v2" in command:  # the REST API, as the comments and prose say
        answer = json.loads(out)
        if command.endswith("/infer"):
            (output,) = answer["outputs"]
            assert (answer["model_name"], answer["model_version"]) == ("fashion", "1")
            assert (output["name"], output["shape"], len(output["data"])) == (
                "probabilities",
                [1, 10],
                10,
            )
        elif "/health/ready" in command:
            assert answer == {"ready": True}
        else:
            assert answer["name"] == "fashion" and answer["versions"] == ["1"]
        return
    if command.startswith("curl "):
        labels = re.search(r"`fashion_model_info\{([^}]*)\}`", CALLING_PROSE)
        assert labels, "the calling sections no longer list fashion_model_info's labels"
        (line,) = lines
        served = set(re.findall(r"(\w+)=\"", line))
        assert served == set(labels.group(1).split(",")), line
        return
    if "--list" in command:
        assert {"fashion.v1.PredictionService", "inference.GRPCInferenceService"} <= set(lines)
        assert "grpc.health.v1.Health" in lines
        return
    records = [json.loads(line) for line in lines]
    if "--evaluate" in command:
        (result,) = records
        assert set(result) == documented_keys("`--evaluate [--limit N] [--batch-size B]")
        metadata = json.loads((model_repo / "fashion" / "1" / "metadata.json").read_text())
        # "its accuracy equals the test_accuracy in the model's metadata"
        assert result["accuracy"] == pytest.approx(metadata["test_accuracy"], abs=1e-6)
        assert result["images"] == 10_000
    elif "--info" in command:
        (info,) = records
        assert info["name"] == "fashion" and len(info["classNames"]) == 10
    elif "--call" in command:
        (response,) = records
        if "Health/Check" in command:
            assert response == {"status": "SERVING"}
        elif "/Predict" in command:
            assert len(response["predictions"][0]["topK"]) == 3
        else:
            assert response["name"] == "fashion"
    else:  # image files
        files = [
            name
            for word in shlex.split(command)
            if word.endswith((".png", ".jpg"))
            for name in sorted(glob.glob(word, root_dir=ROOT))
        ]
        assert files and [r["file"] for r in records] == files
        keys = documented_keys("`fashion-predict IMAGE...")
        if "--top-k" in command:
            keys.add("top_k")
        assert all(set(r) == keys for r in records), records[0]


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_calling_the_server_shell_command_works_as_written(
    call: Call, served: ServerProcess, model_repo: Path
) -> None:
    result = run_shell(call, served)
    assert result.returncode == 0, f"{call}\n{result.stderr}"
    assert result.stderr == ""
    check_output(call.command, result.stdout, model_repo)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:50])
def test_calling_the_server_python_block_works_as_written(
    block: str, served: ServerProcess
) -> None:
    # Its own process, from the repository root: tritonclient's protobuf messages cannot
    # share a process with the server's generated ones.
    result = subprocess.run(
        [sys.executable, "-c", localize(block, served)],
        cwd=ROOT,
        env=user_shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip()


# --- what up.sh installs ----------------------------------------------------------------


def up_sh_requirements() -> set[str]:
    """Distribution names up.sh's ``ensure_venv EXTRAS`` installs (base + those extras)."""
    up_sh = (ROOT / "scripts" / "up.sh").read_text()
    extras = re.search(r"^ensure_venv (\S+)$", up_sh, re.M)
    assert extras, "up.sh no longer calls ensure_venv"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras.group(1).split(","):
        requirements += project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=! ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_everything_the_calling_sections_use_is_installed_by_up_sh() -> None:
    installed = up_sh_requirements()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    modules = {
        name.split(".")[0]
        for block in PYTHON_BLOCKS
        for name in re.findall(r"^\s*(?:import|from) ([\w.]+)", block, re.M)
        + re.findall(r"^import .*?, ([\w.]+)", block, re.M)
    }
    providers = importlib.metadata.packages_distributions()
    for module in modules:
        distributions = {d.lower() for d in providers.get(module, [])}
        assert distributions & installed, f"{module} ({distributions}) is not installed by up.sh"
    for call in CALLS:
        program = call.command.split()[0]
        if program.startswith("fashion-"):
            assert program in project["scripts"]


# --- synopses and flags against --help ---------------------------------------------------


@cache
def help_entries(command: str) -> dict[str, str]:
    """``--flag`` -> its whole ``--help`` entry (invocation and text, whitespace joined)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHION_")}
    text = subprocess.run(
        [str(BIN / command), "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    body = text.split("\noptions:\n", 1)[1]
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=  -)", body):
        invocation = re.split(r"\s{2,}", entry.strip(), maxsplit=1)[0]
        for flag in re.findall(r"--[a-z][\w-]*", invocation):
            entries[flag] = " ".join(entry.split())
    entries.pop("--help", None)
    return entries


def default_in_help(entry: str, value: str) -> bool:
    """Whether ``--help`` quotes ``value`` as the default (argparse's or in its own words)."""
    for quoted in re.findall(r"default:? ?([^\s()]*)", entry):
        if quoted.rstrip(",;") == value:
            return True
        try:
            if float(quoted.rstrip(",;")) == float(value):
                return True
        except ValueError:
            pass
    return False


def test_fashion_train_synopsis_is_its_help() -> None:
    (synopsis,) = [b for b in fenced(section(*TRAIN_SYNOPSIS), "bash") if "[--" in b]
    items = re.findall(r"\[(--[\w-]+)(?: ([^\]]+))?\]", synopsis)
    entries = help_entries("fashion-train")
    assert [flag for flag, _ in items if flag not in entries] == [], "not in --help"
    assert sorted(set(entries) - {flag for flag, _ in items}) == [], "missing from the synopsis"
    for flag, value in items:
        if "|" in value:
            choices = re.search(r"\{([^}]*)\}", entries[flag])
            assert choices and set(value.split("|")) == set(choices.group(1).split(",")), flag
        elif value and not value.isupper():
            assert default_in_help(entries[flag], value), (flag, value, entries[flag])


def test_fashion_serve_flag_table_is_its_help() -> None:
    rows = re.findall(r"^\| (`--[^|]+) \| ([^|]+) \|", section(*SERVE_FLAGS), re.M)
    entries = help_entries("fashion-serve")
    documented = set()
    for flags_cell, default_cell in rows:
        flags = re.findall(r"`(--[\w-]+)`", flags_cell)
        defaults = re.findall(r"`([^`]*)`", default_cell) or [default_cell.strip()] * len(flags)
        assert len(defaults) == len(flags), flags_cell
        for flag, default in zip(flags, defaults, strict=True):
            documented.add(flag)
            assert flag in entries, f"{flag} is in {SERVE_FLAGS[0]} but not in fashion-serve --help"
            quoted = {"—": "", "off": "False"}.get(default, default)
            assert default_in_help(entries[flag], quoted), (flag, default, entries[flag])
    assert sorted(set(entries) - documented) == [], f"missing from {SERVE_FLAGS[0]}'s table"


def code_snippets() -> Iterator[str]:
    """Every inline code span and every command line of every fenced block, on every page."""
    for text in PAGES.values():
        without_blocks = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        for span in re.findall(r"`([^`]+)`", without_blocks):  # a span may wrap onto the next line
            yield " ".join(span.split())
        for block in re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S):
            yield from shell_commands(block)


def test_every_flag_given_to_a_fashion_command_exists() -> None:
    unknown = []
    for snippet in code_snippets():
        for command in COMMANDS:
            for match in re.finditer(rf"(?<![\w-]){command}\b([^|;#&`]*)", snippet):
                for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", match.group(1)):
                    if flag != "--help" and flag not in help_entries(command):
                        unknown.append(f"{command} {flag}  (in: {snippet.strip()[:80]})")
    assert unknown == []


# --- numbers from one place -------------------------------------------------------------


def report_figures(path: str) -> dict[str, str]:
    lines = (ROOT / path).read_text().splitlines()
    return dict(re.findall(r"^- \*\*([^*]+)\*\*: (\S+)", "\n".join(lines), re.M))


def test_quoted_results_are_the_published_reports() -> None:
    rows = re.findall(
        r"^\| `(fashion-train[^`]*)` \| \*\*([\d.]+) %\*\*[^|]* \| (\d+) \(best: (\d+)\) "
        r"\| (\d+) s",
        PAGES[RESULTS_PAGE],
        re.M,
    )
    assert len(rows) == 2, rows
    for command, accuracy, epochs, best, seconds in rows:
        report = report_figures(REPORTS["bn_cnn" if "bn_cnn" in command else "course_cnn"])
        assert float(accuracy) == round(float(report["test accuracy"]) * 100, 2), command
        assert (epochs, best) == (report["epochs run"], report["best epoch"]), command
        assert int(seconds) == round(float(report["training seconds"])), command
    # README's headline: the course CNN's accuracy, then bn_cnn's.
    headline = re.findall(r"\*\*([\d.]+) %\*\*", section(README_PAGE, "Results"))
    published = [report_figures(REPORTS[arch])["test accuracy"] for arch in REPORTS]
    assert headline == [f"{float(a) * 100:.2f}" for a in published]


def test_no_training_time_is_quoted_outside_the_results() -> None:
    for page, text in PAGES.items():
        if page != RESULTS_PAGE:
            # A number that ends a word ("k8s") is not a time.
            assert re.findall(r"(?<!\w)\d+\s*(?:s|min|minutes)\b", text) == [], page
    up_sh = (ROOT / "scripts" / "up.sh").read_text()
    assert "minute" not in up_sh
    # up.sh's one figure is read from the published run's report at run time.
    lines = [line.strip() for line in up_sh.splitlines()]
    read = [line for line in lines if line.startswith(("report=", "seconds="))]
    assert len(read) == 2, read
    script = "\n".join([f"ROOT={shlex.quote(str(ROOT))}", *read, 'echo "$seconds"'])
    printed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    figure = report_figures(REPORTS["course_cnn"])["training seconds"]
    assert printed.stdout.strip() == figure.split(".")[0]


# --- the other commands a reader can run in seconds ---------------------------------------


def inspect_commands() -> list[str]:
    return sorted({s for s in code_snippets() if s.startswith("fashion-inspect ")})


@pytest.mark.parametrize("command", inspect_commands())
def test_fashion_inspect_command_works_as_written(
    command: str, model_repo: Path, tmp_path: Path
) -> None:
    # From a directory of its own, the model found the way up.sh leaves it: $FASHION_MODEL_REPO.
    env = {**user_shell_env(), "FASHION_MODEL_REPO": str(model_repo)}
    env["PATH"] = os.pathsep.join([str(BIN), env["PATH"]])
    result = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = shlex.split(command)[shlex.split(command).index("--out") + 1]
    assert result.stdout == f"wrote {out}\n"
    assert (tmp_path / out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_server_started_outside_the_repository_says_where_it_looked(tmp_path: Path) -> None:
    # The default --model-repo is "models", relative to the current directory.
    env = {k: v for k, v in user_shell_env().items() if not k.startswith("FASHION_")}
    result = subprocess.run(
        [str(BIN / "fashion-serve"), "--port", "0", "--metrics-port", "-1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert f"no model version in {tmp_path.resolve() / 'models'};" in result.stderr
    assert "--model-repo" in result.stderr and "FASHION_MODEL_REPO" in result.stderr
