"""``mela data pack``: write a workspace data set's splits as packs (see :mod:`mela.data.packed` for the layout).

Packing reads each split through the data set registry from its original files, so it sits above the registry;
:mod:`mela.data.packed` (reading and writing one packed split) sits below it, and the registry loads packs with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mela.data.packed import packed_folder, source_stamp, write_split
from mela.data.registry import _load, get_dataset_spec, workspace_datasets
from mela.errors import MelaError


def pack_dataset(name: str, data_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write every split of workspace data set ``name`` (any supported format) as a pack; returns the files.

    Each split is read from its original files, never from an older pack, and stamped before it is read.
    """
    valid = workspace_datasets()
    if name not in valid:
        raise MelaError(f"cannot pack '{name}': not a workspace data set; valid names: {', '.join(valid)}")
    spec = get_dataset_spec(name)
    folder = packed_folder(data_dir, name)
    written = []
    for split in spec.splits:
        stamp = source_stamp(spec, data_dir, split)
        data = _load(spec, split, Path(data_dir), use_pack=False)  # a missing file fails here, before any write
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MelaError(f"cannot create {folder} ({exc.strerror or exc}); set WORKSPACE to a writable "
                            "folder") from exc
        paths = write_split(folder, split, data, stamp)
        written += paths
        log(f"{name} {split}: {len(data.images)} images of {'x'.join(map(str, data.image_shape))}, {data.n_items} "
            f"items -> {paths[0]} ({paths[0].stat().st_size / 2**20:.1f} MiB)")
    return written
