"""``mela data``: inspect, check, download, unpack, convert and pack base data sets.

The workspace is ``--workspace DIR`` when given, else ``$WORKSPACE`` (else
``~/mela-workspace``); data live in its ``metaL_data`` folder, as in the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.workspace import data_dir, workspace_root

META_DATASET_SOURCES = ("aircraft", "cu_birds", "vgg_flower")


def _workspace(args: argparse.Namespace) -> Path:
    return workspace_root(args.workspace)


# --------------------------------------------------------------------------- info


def split_summary(split) -> dict:
    """Counts ``mela data info`` reports for one loaded split."""
    counts = np.bincount(split.labels, minlength=split.n_classes) if split.n_items else np.zeros(0, np.int64)
    summary = {
        "classes": int(split.n_classes),
        "images": int(len(split.images)),
        "images_per_class_min": int(counts.min()) if len(counts) else 0,
        "images_per_class_median": float(np.median(counts)) if len(counts) else 0.0,
    }
    if split.n_items != len(split.images):
        summary["items"] = int(split.n_items)
    if split.superclass is not None:
        summary["superclasses"] = int(np.max(split.superclass)) + 1 if len(split.superclass) else 0
    return summary


def dataset_info(name: str, folder: Path) -> dict:
    """Classes, images and images per class of every split of ``name``, plus shape, super-classes and groups."""
    from mela.data.packed import pack_state
    from mela.data.registry import get_dataset_spec, load_split

    spec = get_dataset_spec(name)
    info: dict = {
        "name": name,
        "description": spec.description,
        "image_shape": None,
        "splits": {},
        "superclasses": None,
        "groups": [],
    }
    superclasses: list[str] = []
    for split_name in spec.splits:
        split = load_split(name, split_name, folder)
        info["image_shape"] = list(split.image_shape)
        info["splits"][split_name] = split_summary(split)
        state, why = pack_state(spec, split_name, folder)
        if state != "absent":
            info["splits"][split_name]["pack"] = state if why is None else f"{state}: {why}"
        if split.superclass is not None:
            names = split.superclass_names or tuple(f"{split_name}:{i}" for i in range(int(split.superclass.max()) + 1))
            superclasses.extend(n for n in names if n not in superclasses)
        if split.groups is not None or split.group_names != ("all",):
            info["groups"] = list(split.group_names)
    info["superclasses"] = superclasses or None
    return info


def _format_info(info: dict) -> str:
    shape = "x".join(map(str, info["image_shape"] or []))
    lines = [f"{info['name']}: {info['description']}", f"  image shape {shape}"]
    for split, s in info["splits"].items():
        extra = f", {s['items']} items" if "items" in s else ""
        extra += f", {s['superclasses']} super-classes" if "superclasses" in s else ""
        lines.append(
            f"  {split:<5} {s['classes']} classes, {s['images']} images{extra}; per class min "
            f"{s['images_per_class_min']}, median {s['images_per_class_median']:g}"
        )
    packs = {split: s["pack"] for split, s in info["splits"].items() if "pack" in s}
    current = [split for split, state in packs.items() if state == "current"]
    if current:
        lines.append(f"  packed (memory-mapped): {', '.join(current)}")
    for split, state in packs.items():
        if state != "current":
            lines.append(f"  pack of {split} ignored, {state} (run `mela data pack {info['name']}`)")
    if info["groups"]:
        lines.append(f"  groups: {', '.join(info['groups'])}")
    if info["superclasses"]:
        lines.append(f"  super-classes: {len(info['superclasses'])}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from mela.data.packed import pack_state
    from mela.data.registry import get_dataset_spec, missing_files, workspace_datasets

    folder = data_dir(_workspace(args))

    def loadable(name: str, split: str) -> bool:  # its files are there, or a current pack stands in for them
        spec = get_dataset_spec(name)
        return not missing_files(name, split, folder) or pack_state(spec, split, folder)[0] == "current"

    if args.name:
        infos = [dataset_info(args.name, folder)]
    else:
        infos = []
        for name in workspace_datasets():
            if not all(loadable(name, split) for split in get_dataset_spec(name).splits):
                infos.append({"name": name, "present": False})
            else:
                infos.append(dataset_info(name, folder))
    if args.json:
        print(json.dumps(infos[0] if args.name else infos, indent=2))
    else:
        for info in infos:
            print(_format_info(info) if info.get("present", True) else f"{info['name']}: not present in {folder}")
    return 0


# --------------------------------------------------------------------------- check / download / unpack


def cmd_check(args: argparse.Namespace) -> int:
    from mela.converters.check import check_workspace, exit_status, format_reports

    reports = check_workspace(data_dir(_workspace(args)), names=args.names or None, load=not args.quick)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print(format_reports(reports))
    return exit_status(reports, named=bool(args.names))


def cmd_download(args: argparse.Namespace) -> int:
    from mela.converters.archives import archive_names, download_archive

    root = _workspace(args)
    for name in archive_names(args.name):
        path = download_archive(name, root, force=args.force, progress=not args.no_progress)
        print(f"{name}: {path}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from mela.converters.archives import unpack_archives

    for name, created in unpack_archives(_workspace(args), args.name, force=args.force).items():
        if created:
            print(f"{name}: unpacked {', '.join(str(p) for p in created)}")
        else:
            print(f"{name}: already unpacked, skipped (pass --force to unpack it again)")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from mela.data.pack import pack_dataset

    pack_dataset(args.name, data_dir(_workspace(args)))
    return 0


# --------------------------------------------------------------------------- converters


def cmd_convert_tfrecords(args: argparse.Namespace) -> int:
    from mela.converters.meta_dataset import convert_source

    sources = META_DATASET_SOURCES if args.dataset == "all" else (args.dataset,)
    for source in sources:
        for path in convert_source(source, data_dir(_workspace(args)), progress=not args.no_progress):
            print(f"wrote {path}")
    return 0


def cmd_h_aircraft(args: argparse.Namespace) -> int:
    from mela.converters.fgvc import attach_hierarchy

    summary = attach_hierarchy(data_dir(_workspace(args)), args.fgvc_dir)
    for split, counts in summary.items():
        print(
            f"{split}: {counts['variant']} variants, {counts['family']} families, "
            f"{counts['manufacturer']} manufacturers"
        )
    return 0


def _class_lists(paths: list[str] | None) -> list[str]:
    from mela.converters.ximagenet import read_class_ids

    ids: list[str] = []
    for path in paths or []:
        ids.extend(read_class_ids(path))
    return ids


def cmd_ximagenet(args: argparse.Namespace) -> int:
    from mela.converters.ximagenet import build_ximagenet

    out = build_ximagenet(
        args.train_dir,
        data_dir(_workspace(args)),
        args.name,
        n_classes=args.classes,
        images_per_class=args.images_per_class,
        seed=args.seed,
        force_train=_class_lists(args.force_train),
        force_val=_class_lists(args.force_val),
        force_test=_class_lists(args.force_test),
        exclude_from_train=_class_lists(args.exclude),
        image_size=args.image_size,
        force=args.force,
        progress=not args.no_progress,
    )
    print(f"wrote {out}")
    return 0


def cmd_cifar(args: argparse.Namespace) -> int:
    from mela.converters.cifar import convert_cifar

    summary = convert_cifar(args.archive, data_dir(_workspace(args)))
    for name, splits in summary.items():
        print(f"{name}: " + ", ".join(f"{split} {n} classes" for split, n in splits.items()))
    return 0


GLYPH_BUILDER = Path(__file__).resolve().parents[2] / "tools" / "glyph_builder.py"


def load_glyph_builder(path: Path = GLYPH_BUILDER):
    """The glyph builder module of a source checkout (it is not part of the installed package)."""
    import importlib.util

    if not path.is_file():
        raise MelaError("the glyph builder ships with mela's source checkout (tools/glyph_builder.py), not with the "
                        "installed package; clone the repository and run `mela data build-glyphs` from there "
                        "(the shipped glyphs.npz needs no rebuilding to be used)")
    spec = importlib.util.spec_from_file_location("mela_glyph_builder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def cmd_build_glyphs(rest: list[str]) -> int:
    """Hand everything after ``build-glyphs`` to the glyph builder untouched."""
    return int(load_glyph_builder().main(rest) or 0)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``mela data`` argument parser (every sub-command takes ``--workspace``)."""
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--workspace", help="workspace folder (default: $WORKSPACE, else ~/mela-workspace)")
    # Sub-commands accept --workspace too; SUPPRESS keeps them from resetting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder")
    parser = argparse.ArgumentParser(prog="mela data", description=__doc__.splitlines()[0], parents=[top])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", parents=[common], help="classes and images per split of a data set (or all)")
    info.add_argument("name", nargs="?", help="data set name (default: every registered data set)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_info)

    check = sub.add_parser("check", parents=[common], help="report present / missing / corrupt data sets",
                           description="Exits 1 when a data set is corrupt, or when one named here is missing.")
    check.add_argument("names", nargs="*", help="data set names (default: all)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--quick", action="store_true", help="only check that files exist, do not load them")
    check.set_defaults(handler=cmd_check)

    download = sub.add_parser("download", parents=[common], help="download a prepared archive (or all)")
    download.add_argument("name", help="archive name or 'all'")
    download.add_argument("--force", action="store_true", help="download again even if the archive is there")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(handler=cmd_download)

    unpack = sub.add_parser("unpack", parents=[common], help="unpack downloaded archives into metaL_data")
    unpack.add_argument("name", nargs="?", default="all", help="archive name or 'all' (default)")
    unpack.add_argument("--force", action="store_true", help="replace data set folders that already exist")
    unpack.set_defaults(handler=cmd_unpack)

    pack = sub.add_parser("pack", parents=[common], help="store a data set's splits as memory-mapped uint8 arrays",
                          description="Writes metaL_data/packed/NAME/<split>.images.npy (+ labels and a stamp of the "
                                      "source files); loading NAME then memory-maps them, shared by every process. "
                                      "A pack whose source files changed is ignored with a note.")
    pack.add_argument("name", help="a workspace data set (see `mela data info`)")
    pack.set_defaults(handler=cmd_pack)

    convert = sub.add_parser("convert-tfrecords", parents=[common], help="Meta-Dataset TFRecords -> pickles")
    convert.add_argument("--dataset", required=True, choices=(*META_DATASET_SOURCES, "all"))
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert.set_defaults(handler=cmd_convert_tfrecords)

    haircraft = sub.add_parser("h-aircraft", parents=[common], help="add FGVC family/manufacturer labels")
    haircraft.add_argument("--fgvc-dir", required=True, help="the unpacked fgvc-aircraft-2013b folder")
    haircraft.set_defaults(handler=cmd_h_aircraft)

    xin = sub.add_parser("ximagenet", parents=[common], help="build an ImageNet-derived data set (mini60 style)")
    xin.add_argument("--train-dir", required=True, help="ILSVRC train folder (one sub-folder of JPEGs per wnid)")
    xin.add_argument("--name", default="x60ImageNet", help="output folder under metaL_data (x60ImageNet, ...)")
    xin.add_argument("--classes", type=int, required=True, help="number of classes")
    xin.add_argument("--images-per-class", type=int, required=True, help="images per class")
    xin.add_argument("--seed", type=int, default=0)
    xin.add_argument("--exclude", action="append", help="file of classes that must not be in train (repeatable)")
    xin.add_argument("--force-train", action="append", help="file of classes forced into train")
    xin.add_argument("--force-val", action="append", help="file of classes forced into val")
    xin.add_argument("--force-test", action="append", help="file of classes forced into test")
    xin.add_argument("--image-size", type=int, default=84)
    xin.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    xin.add_argument("--no-progress", action="store_true", help="no progress bar")
    xin.set_defaults(handler=cmd_ximagenet)

    cifar = sub.add_parser("cifar", parents=[common], help="CIFAR-FS and FC100 from cifar-100-python.tar.gz")
    cifar.add_argument("--archive", required=True, help="path to cifar-100-python.tar.gz")
    cifar.set_defaults(handler=cmd_cifar)

    sub.add_parser("build-glyphs", help="build the glyph data set (arguments go to the glyph builder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mela data ...``; a MelaError prints ``error: <message>`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "build-glyphs":
            return cmd_build_glyphs(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except MelaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
