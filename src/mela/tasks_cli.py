"""``mela tasks``: make a locally labelled task collection from a data set, or describe one.

    mela tasks make --from glyphs --out ~/glyph-tasks --tasks 1000 --ways 3-8 --shots 1-5 --recur 1-30
    mela tasks info ~/glyph-tasks            # or a manifest.csv
"""

from __future__ import annotations

import argparse
import json
import sys

from mela.errors import MelaError
from mela.workspace import data_dir, workspace_root


def parse_range(text: str) -> tuple[int, int]:
    """"3-8" -> (3, 8); "5" -> (5, 5)."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise MelaError(f"'{text}' is not a range; write LOW-HIGH (e.g. 3-8) or one number")


def cmd_make(args: argparse.Namespace) -> int:
    from mela.data.registry import DatasetRef, open_dataset
    from mela.data.task_maker import MakeSettings, make_info, make_tasks, write_tasks
    from mela.data.tasks import LoadOptions

    settings = MakeSettings(n_tasks=args.tasks, ways=parse_range(args.ways), shots=parse_range(args.shots),
                            recur=parse_range(args.recur), overlap=not args.no_overlap, seed=args.seed)
    ref = DatasetRef(args.source, path=args.path, split_file=args.split_file,
                     options=LoadOptions(image_size=args.image_size), seed=args.seed)
    split = open_dataset(ref, data_dir(workspace_root(args.workspace))).split(args.split)
    made = make_tasks(split, settings)
    info = make_info(made, settings, f"{args.source}:{args.split}")
    target = write_tasks(made, split, args.out, args.format, info)
    low, median, high = info["recurrence_min_median_max"]
    print(f"wrote {info['tasks']} tasks ({info['task_classes']} task classes of {info['global_classes']} true classes,"
          f" {info['items']} images; ways {info['ways_range'][0]}-{info['ways_range'][1]}, images per class "
          f"{info['shots_range'][0]}-{info['shots_range'][1]}, a class recurs {low}-{high} times, median {median:g})"
          f" to {target}, with truth.csv")
    print(f"use it: dataset=tasks tasks_path={target}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mela.data.tasks import LoadOptions, load_tasks

    collection = load_tasks(args.path, LoadOptions(args.image_size, args.truth, args.skip_bad_tasks))
    summary = collection.summary()
    if args.json:
        print(json.dumps({"source": collection.source, **summary, "notes": list(collection.notes)}, indent=2))
        return 0
    s = summary
    print(f"{collection.source}: {s['tasks']} tasks, {s['task_classes']} task classes, {s['items']} labelled images "
          f"({s['images']} distinct, {s['images_in_several_tasks']} in several tasks), "
          f"{'x'.join(map(str, s['image_shape']))}")
    print(f"  ways {s['ways_min']}-{s['ways_max']} (median {s['ways_median']:g}); images per class "
          f"{s['images_per_class_min']}-{s['images_per_class_max']} (median {s['images_per_class_median']:g}); "
          f"{s['single_image_classes']} classes with a single image")
    if "true_global_classes" in s:
        print(f"  truth: {s['true_global_classes']} global classes")
    for reason, count in s["skipped"].items():
        example = next(k.message for k in collection.skipped if k.reason == reason)
        print(f"  skipped {count} task(s): {reason}, e.g. {example}")
    for note in collection.notes:
        print(f"  note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mela tasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    make = sub.add_parser("make", help="write a task collection (and truth.csv) drawn from a labelled data set")
    make.add_argument("--from", dest="source", required=True, help="registered data set (glyphs, custom, ...)")
    make.add_argument("--out", required=True, help="new folder to write")
    make.add_argument("--split", default="train", help="split to draw from (default train, so that eval_dataset "
                                                      "stays on unseen classes)")
    make.add_argument("--tasks", type=int, default=1000, help="number of tasks (default 1000)")
    make.add_argument("--ways", default="3-8", help="classes per task, LOW-HIGH (default 3-8)")
    make.add_argument("--shots", default="1-5", help="images per task class, LOW-HIGH (default 1-5)")
    make.add_argument("--recur", default="1-30", help="tasks a true class appears in, LOW-HIGH (default 1-30)")
    make.add_argument("--no-overlap", action="store_true", help="use each image in at most one task")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--format", choices=("folder", "manifest"), default="folder",
                      help="folder: OUT/<task>/<class>/*.png; manifest: OUT/manifest.csv + OUT/images/")
    make.add_argument("--path", help="the user's files, for --from custom")
    make.add_argument("--split-file", help="JSON class split, for --from custom")
    make.add_argument("--image-size", type=int, default=84, help="image side, for --from custom (default 84)")
    make.add_argument("--workspace", help="workspace folder (default: $WORKSPACE, else ~/mela-workspace)")
    make.set_defaults(handler=cmd_make)

    info = sub.add_parser("info", help="load a task collection and describe it (checks every task and image)")
    info.add_argument("path", help="folder of task folders, or a manifest .csv")
    info.add_argument("--image-size", type=int, help="resize to this side (default: keep a shared size)")
    info.add_argument("--truth", help="truth CSV (default: truth.csv beside the collection, when present)")
    info.add_argument("--skip-bad-tasks", action="store_true", help="skip bad tasks and count them")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mela tasks ...``; a MelaError prints ``error: <message>`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except MelaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
