"""``mela data check``: which registered data sets are usable in a workspace, and what to do about the rest.

Each data set and split is reported as ``present`` (files there and loadable),
``missing`` (a required file is absent) or ``corrupt`` (files there but
unreadable, wrongly shaped, or with a label count that does not match the
images), with the offending path and how to obtain the data.

Packs (``mela data pack``) count: a split whose source files are gone but whose pack is
current is present (the pack is then the only copy, and is what gets loaded); a stale or
damaged pack beside the files is named in the detail, since loading ignores it.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mela.data.base import DatasetSpec, ImageSplit
from mela.data.packed import load_packed, pack_state, packed_folder, split_paths
from mela.data.registry import get_dataset_spec, workspace_datasets
from mela.errors import MelaError

PRESENT, MISSING, CORRUPT = "present", "missing", "corrupt"

# What a loader raises, beyond its own MelaErrors, when the bytes of a file are bad. Anything else (MemoryError,
# a bug's AttributeError or KeyError, ...) propagates rather than being reported as a corrupt file.
FILE_DAMAGE = (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Report:
    """The state of one split of one data set."""

    dataset: str
    split: str
    status: str
    path: Path | None
    detail: str
    how_to_get: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "status": self.status,
            "path": str(self.path) if self.path is not None else None,
            "detail": self.detail,
            "how_to_get": self.how_to_get,
        }


def check_split(name: str, split: str, data_dir: Path, load: bool = True) -> Report:
    """Report on one split: file presence first, then (with ``load``) a full load to catch corrupt files."""
    spec = get_dataset_spec(name)
    required = spec.required_files(Path(data_dir), split)
    state, why = pack_state(spec, split, Path(data_dir))
    missing = [path for path in required if not path.exists()]
    if missing and state == "current":
        return _check_pack_only(spec, split, Path(data_dir), load)
    pack = _pack_note(name, state, why)
    if not required:
        return Report(name, split, PRESENT, None, "built in" + pack, spec.how_to_get)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return Report(name, split, MISSING, missing[0], f"{missing[0]} is missing{more}" + pack, spec.how_to_get)
    if not load:
        return Report(name, split, PRESENT, required[0], "files present (not loaded)" + pack, spec.how_to_get)
    try:
        loaded = spec.load(Path(data_dir), split)
    except MelaError as exc:
        return Report(name, split, CORRUPT, _named_path(str(exc), required), str(exc), spec.how_to_get)
    except FILE_DAMAGE as exc:
        return Report(name, split, CORRUPT, required[0], f"{type(exc).__name__}: {exc}", spec.how_to_get)
    if state == "current" and load_packed(spec, split, Path(data_dir)) is None:
        pack = _pack_note(name, "damaged", "its arrays are unreadable")
    return Report(name, split, PRESENT, required[0], _describe(loaded) + pack, spec.how_to_get)


def _check_pack_only(spec: DatasetSpec, split: str, data_dir: Path, load: bool) -> Report:
    """A split whose source files are gone but whose pack is current: the pack is the copy that loads."""
    images_path = split_paths(packed_folder(data_dir, spec.name), split)[0]
    if not load:
        return Report(spec.name, split, PRESENT, images_path, "packed copy, source files gone (not loaded)",
                      spec.how_to_get)
    loaded = load_packed(spec, split, data_dir)
    if loaded is None:
        return Report(spec.name, split, CORRUPT, images_path, "the packed copy is unreadable and the source files "
                      f"are gone; restore them and run `mela data pack {spec.name}`", spec.how_to_get)
    return Report(spec.name, split, PRESENT, images_path, _describe(loaded) + " (packed copy, source files gone)",
                  spec.how_to_get)


def _describe(loaded: ImageSplit) -> str:
    return f"{loaded.n_classes} classes, {len(loaded.images)} images of {'x'.join(map(str, loaded.image_shape))}"


def _pack_note(name: str, state: str, why: str | None) -> str:
    """What a report's detail says about the split's pack (nothing when there is none)."""
    if state == "current":
        return "; packed (memory-mapped)"
    if state in ("stale", "damaged"):
        return f"; its pack is ignored: {why} (run `mela data pack {name}`)"
    return ""


def _named_path(message: str, candidates: list[Path]) -> Path:
    """The required file a loader's error message names (the first one otherwise)."""
    for path in candidates:
        if str(path) in message:
            return path
    return candidates[0]


def check_workspace(data_dir: str | Path, names: list[str] | None = None, load: bool = True) -> list[Report]:
    """Report on every split of every registered data set (or of ``names``) under ``data_dir``."""
    reports = []
    for name in names if names is not None else workspace_datasets():
        spec = get_dataset_spec(name)
        for split in spec.splits:
            reports.append(check_split(name, split, Path(data_dir), load=load))
    return reports


def exit_status(reports: list[Report], named: bool) -> int:
    """1 when the check failed: a corrupt split, or (for data sets the user named) a missing one; else 0.

    Without names every registered data set is checked, and most are legitimately absent.
    """
    bad = {CORRUPT, MISSING} if named else {CORRUPT}
    return 1 if any(r.status in bad for r in reports) else 0


def format_reports(reports: list[Report]) -> str:
    """A plain-text table, one line per data set and split, with a hint under anything not present."""
    lines, hinted = [], set()
    width = max((len(r.dataset) for r in reports), default=8)
    for report in reports:
        lines.append(f"{report.dataset:<{width}}  {report.split:<5}  {report.status:<7}  {report.detail}")
        if report.status != PRESENT and report.dataset not in hinted:
            hinted.add(report.dataset)
            lines.append(f"{'':<{width}}  to get it: {report.how_to_get}")
    return "\n".join(lines)
