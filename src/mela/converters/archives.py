"""Download and unpack the reference's prepared data set archives.

``make download_all`` / ``mela data download NAME`` fetch each archive to
``$WORKSPACE/archives/<name>.tar`` (through a ``.part`` file, renamed when
complete, so an interrupted download is never mistaken for a finished one);
``make unpack_datasets`` / ``mela data unpack`` extract them into
``$WORKSPACE/metaL_data/``. Extraction refuses absolute paths, ``..`` escapes,
links and device files, and will not overwrite a data set folder that is
already there unless asked to.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from mela.errors import MelaError
from mela.workspace import data_dir

ARCHIVE_URLS = {
    "aircraft": "https://figshare.com/ndownloader/files/37914690?private_link=a413a04a37d189638118",
    "cu_birds": "https://figshare.com/ndownloader/files/37832133?private_link=3c10efda4881af51db57",
    "vgg_flower": "https://figshare.com/ndownloader/files/37832118?private_link=9c42222e62f2b6013568",
    "miniImageNet": "https://figshare.com/ndownloader/files/37911240?private_link=ab81ddf3fd85f775cc6d",
    "mini60": "https://figshare.com/ndownloader/files/37835829?private_link=fc867135b430db59ceaf",
    "tieredImageNet": "https://figshare.com/ndownloader/files/38009146?private_link=a7afdc3fb808064be581",
    "tiered780": "https://figshare.com/ndownloader/files/37836714?private_link=89a52d40c31da8724b61",
}
ARCHIVES_SUBDIR = "archives"
_CHUNK = 1 << 20


def archive_names(name: str) -> list[str]:
    """``all`` -> every archive name; otherwise the name itself, checked."""
    if name == "all":
        return list(ARCHIVE_URLS)
    if name not in ARCHIVE_URLS:
        raise MelaError(f"no prepared archive named '{name}'; choose one of: all, {', '.join(ARCHIVE_URLS)}")
    return [name]


def archive_path(workspace: str | Path, name: str) -> Path:
    """Where the archive of ``name`` is kept: ``$WORKSPACE/archives/<name>.tar``."""
    return Path(workspace) / ARCHIVES_SUBDIR / f"{name}.tar"


def download_archive(
    name: str,
    workspace: str | Path,
    force: bool = False,
    progress: bool = True,
    opener: Callable[..., object] = urllib.request.urlopen,
) -> Path:
    """Fetch one archive (skipped when already there, unless ``force``); returns its path."""
    from tqdm import tqdm

    url = ARCHIVE_URLS[archive_names(name)[0]]
    target = archive_path(workspace, name)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with opener(url, timeout=60) as response, open(part, "wb") as out:  # type: ignore[attr-defined]
            total = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            with tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True, desc=name, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise MelaError(
            f"download of {name} from {url} failed: {reason}; download it by hand to {target} "
            "and run make unpack_datasets"
        ) from exc
    os.replace(part, target)
    return target


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Reject anything that could write outside the destination or create special files."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise MelaError(f"{archive} contains an unsafe path '{member.name}'; refusing to unpack it")
    if not (member.isfile() or member.isdir()):
        raise MelaError(f"{archive} contains a link or special file '{member.name}'; refusing to unpack it")


def _strip_prefix(members: list[tarfile.TarInfo]) -> str:
    """Archives made from the workspace may wrap everything in ``metaL_data/``; unwrap it."""
    names = [PurePosixPath(m.name).parts for m in members if PurePosixPath(m.name).parts]
    if names and all(parts[0] == "metaL_data" for parts in names):
        return "metaL_data"
    return ""


def unpack_archive(
    archive: str | Path, target_dir: str | Path, force: bool = False, skip_existing: bool = False
) -> list[Path]:
    """Extract ``archive`` into ``target_dir`` (``metaL_data``); returns the top-level entries it created.

    Extraction happens in a hidden scratch folder first, so a corrupt archive leaves
    nothing half-written. Existing top-level folders are replaced only with ``force``;
    otherwise they are an error, or with ``skip_existing`` the archive is skipped (returns []).
    """
    archive, target_dir = Path(archive), Path(target_dir)
    if not archive.exists():
        raise MelaError(f"{archive} does not exist; run `mela data download NAME` or download it by hand there")
    target_dir.mkdir(parents=True, exist_ok=True)
    scratch = target_dir / f".unpack-{archive.stem}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            prefix = _strip_prefix(members)
            skip = 1 if prefix else 0
            all_parts = [PurePosixPath(m.name).parts for m in members]
            tops = sorted({parts[skip] for parts in all_parts if len(parts) > skip})
            existing = [target_dir / top for top in tops if (target_dir / top).exists()]
            if existing and not force and skip_existing:
                return []
            if existing and not force:
                raise MelaError(
                    f"{existing[0]} already exists; delete it or pass --force to unpack {archive.name} over it"
                )
            scratch.mkdir()
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(scratch, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise MelaError(f"{archive} is not a readable tar archive ({exc}); download it again") from exc
    except MelaError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    created = []
    root = scratch / prefix if prefix else scratch
    for top in tops:
        destination = target_dir / top
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        os.replace(root / top, destination)
        created.append(destination)
    shutil.rmtree(scratch, ignore_errors=True)
    return created


def unpack_archives(workspace: str | Path, name: str = "all", force: bool = False) -> dict[str, list[Path]]:
    """Unpack the named archive, or with ``all`` every archive present in ``$WORKSPACE/archives``.

    With ``all``, archives whose data set folders already exist are skipped (an empty
    list in the result), so ``make unpack_datasets`` can be rerun after a new download.
    """
    names = archive_names(name)
    present = [n for n in names if archive_path(workspace, n).exists()]
    if not present:
        wanted = archive_path(workspace, names[0]) if len(names) == 1 else Path(workspace) / ARCHIVES_SUBDIR
        raise MelaError(f"no archive found at {wanted}; run `make download_all` (or `mela data download NAME`) first")
    target = data_dir(Path(workspace))
    skip = name == "all"
    return {n: unpack_archive(archive_path(workspace, n), target, force=force, skip_existing=skip) for n in present}
