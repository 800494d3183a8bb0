"""Model repositories for tests: real exported versions published the way training does."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from server.contract import CONFIG_FILE, METADATA_FILE, MODEL_NAME


def publish(
    source: Path, repo: Path, model: str = MODEL_NAME, version: int = 1, **metadata: object
) -> Path:
    """Version 1 of the real model in the repository ``source``, published in ``repo`` as
    ``model``/``version``: staged beside it, then renamed into place (as training does).
    ``metadata`` overrides metadata.json fields."""
    staged = repo / model / f".tmp-publish-{version}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / MODEL_NAME / "1", staged)
    meta = json.loads((staged / METADATA_FILE).read_text())
    (staged / METADATA_FILE).write_text(
        json.dumps({**meta, "name": model, "version": version, **metadata})
    )
    target = repo / model / str(version)
    os.rename(staged, target)
    return target


def configure(repo: Path, model: str, config: object) -> None:
    """Write config.json atomically (a half-written file would be refused, not read)."""
    path = repo / model / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config if isinstance(config, str) else json.dumps(config))
    os.replace(tmp, path)
    # A rewrite within the same mtime tick and size must still look changed.
    stamp = time.time_ns() + 1_000_000
    os.utime(path, ns=(stamp, stamp))
