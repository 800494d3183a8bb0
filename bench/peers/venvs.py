"""Each ready-made server in a virtual environment of its own, installed once.

Their pins clash with ours (PyTriton brings numpy 1.x and tritonclient; MLServer its own
uvloop and FastAPI), so neither is ever installed into ``.venv``. A venv is (re)installed only
when its recorded pin list differs from the one asked for.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "bench-peers-pins.txt"
ONNXRUNTIME = "onnxruntime==1.31.1"  # the same runtime as the server's pin


@dataclass(frozen=True)
class PeerEnv:
    name: str
    directory: Path
    pins: tuple[str, ...]

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    def installed(self) -> bool:
        marker = self.directory / MARKER
        return self.python.is_file() and marker.is_file() and marker.read_text() == _pins(self)


def _pins(env: PeerEnv) -> str:
    return "\n".join(env.pins) + "\n"


PYTRITON = PeerEnv("pytriton", ROOT / ".venv-pytriton", ("nvidia-pytriton==0.7.0", ONNXRUNTIME))
# uvloop 0.22+ raises "There is no current event loop" in MLServer 1.7's start-up
# (asyncio.get_event_loop() outside a running loop); MLServer's own pin allows it.
MLSERVER = PeerEnv(
    "mlserver", ROOT / ".venv-mlserver", ("mlserver==1.7.1", ONNXRUNTIME, "uvloop==0.21.0")
)
ENVS = {env.name: env for env in (PYTRITON, MLSERVER)}


def ensure(env: PeerEnv, log: Path) -> None:
    """Create ``env`` and install its pins unless already done; pip's output goes to ``log``."""
    if env.installed():
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        if not env.python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(env.directory)], check=True)
        for step in (["install", *env.pins], ["check"]):
            done = subprocess.run(
                [str(env.python), "-m", "pip", *step], stdout=out, stderr=subprocess.STDOUT
            )
            if done.returncode != 0:
                raise RuntimeError(f"pip {step[0]} in {env.directory} failed: see {log}")
    (env.directory / MARKER).write_text(_pins(env))
