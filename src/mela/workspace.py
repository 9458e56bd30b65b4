"""The workspace folder: ``$WORKSPACE/metaL_data`` and ``$WORKSPACE/checkpoint/label_learn/saves``.

Same layout as the reference code, so a workspace prepared for it works here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mela.errors import MelaError

DEFAULT_WORKSPACE = Path.home() / "mela-workspace"
DATA_SUBDIR = "metaL_data"
SAVES_SUBDIR = Path("checkpoint") / "label_learn" / "saves"

_told_default = False


def workspace_root(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace: ``explicit`` if given, else ``$WORKSPACE``, else ``~/mela-workspace``.

    The fallback is announced once per process on stderr, so a user never
    wonders where their checkpoints went.
    """
    global _told_default
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("WORKSPACE", "").strip()
    if env:
        return Path(env).expanduser()
    if not _told_default:
        print(f"note: WORKSPACE is not set; using {DEFAULT_WORKSPACE}", file=sys.stderr)
        _told_default = True
    return DEFAULT_WORKSPACE


def data_dir(root: Path) -> Path:
    """Where base data sets live (``metaL_data``)."""
    return Path(root) / DATA_SUBDIR


def saves_dir(root: Path) -> Path:
    """Where runs and checkpoints live (``checkpoint/label_learn/saves``)."""
    return Path(root) / SAVES_SUBDIR


def init_workspace(root: Path) -> list[Path]:
    """Create the workspace folders (idempotent); return them."""
    made = [data_dir(root), saves_dir(root)]
    for path in made:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MelaError(f"cannot create the workspace folder {path}: {exc.strerror or exc}; set WORKSPACE to a "
                            "writable folder") from exc
        if not os.access(path, os.W_OK):
            raise MelaError(f"the workspace folder {path} is not writable; set WORKSPACE to a writable folder")
    return made
