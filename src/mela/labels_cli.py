"""``mela labels``: look at the global classes a learn_labeler run inferred, without rerunning anything.

    mela labels show RUN [--class NAME | --task ID]   members and doubt of one class, or a task's classes
    mela labels doubtful RUN [--top N] [--out review.csv]

RUN is a learn_labeler run folder (or a run name in the workspace). Both read the run's ``gallery.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from mela.errors import MelaError
from mela.jsonio import replaced_atomically
from mela.reporting.gallery import Gallery, GalleryClass, doubtful_rows, load_gallery


def _run_dir(ref: str) -> Path:
    path = Path(ref).expanduser()
    if not path.is_dir():
        from mela.runs.store import RunStore

        candidate = RunStore(None).saves / "learn_labeler" / ref
        if not candidate.is_dir():
            raise MelaError(f"{ref} is neither a learn_labeler run folder nor a run name in the workspace")
        path = candidate
    return path


def open_gallery(ref: str) -> Gallery:
    """The gallery of a learn_labeler run, with one line when it has none."""
    path = _run_dir(ref)
    gallery = load_gallery(path, with_strips=False)
    if gallery is None:
        raise MelaError(f"{path} has no gallery.json: give a learn_labeler run folder made by this mela version "
                        "(with gallery=true)")
    return gallery


def _describe(c: GalleryClass, rank: int) -> list[str]:
    split = "no rival" if c.split is None else f"split log-odds {c.split:.2f} against {c.rival}"
    truth = ""
    if c.truth:
        truth = "; truth: " + (", ".join(k for k in ("mixed", "split") if c.truth.get(k)) or "clean")
    lines = [f"{c.name}: {c.size} member(s), doubt {c.doubt:.2f} (rank {rank}), spread {c.spread + 0.0:.2f}, "
             f"{split}, {c.contested} member(s) nearer another class{truth}",
             "  task\tlocal_label\tdistance (over noise)"]
    lines += [f"  {t}\t{loc}\t{'' if d is None else f'{d:.3g}'}" for t, loc, d in c.members]
    return lines


def show(gallery: Gallery, name: str | None, task: str | None) -> list[str]:
    """Lines for one class (``name``), the classes of one task, or a summary of the most doubtful."""
    rank = {c.name: i + 1 for i, c in enumerate(gallery.classes)}
    if name is not None:
        found = gallery.by_name().get(name)
        if found is None:
            raise MelaError(f"no global class '{name}' in this run; `mela labels doubtful RUN` lists them")
        return _describe(found, rank[name])
    if task is not None:
        lines = []
        for c in gallery.classes:
            for t, loc, _ in c.members:
                if t == task:
                    lines.append(f"task {task} local class {loc} -> {c.name} (doubt {c.doubt:.2f}, "
                                 f"rank {rank[c.name]})")
        if not lines:
            raise MelaError(f"no task '{task}' among the labelled tasks of this run")
        return lines
    head = f"{len(gallery.classes)} global classes ({gallery.source} labels); most doubtful first:"
    return [head, *[f"  {c.name}\tdoubt {c.doubt:.2f}\t{c.size} member(s)" for c in gallery.classes[:10]]]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mela labels", description="The global classes of a learn_labeler run: "
                                     "members and doubt (show), the doubtful ones for review (doubtful).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_show = sub.add_parser("show", help="members and doubt of a class, or the classes of a task")
    p_show.add_argument("run", help="learn_labeler run folder or name")
    group = p_show.add_mutually_exclusive_group()
    group.add_argument("--class", dest="name", help="a global class (its name in global_labels.csv, e.g. g17)")
    group.add_argument("--task", help="a task id")
    p_doubt = sub.add_parser("doubtful", help="the most doubtful classes, one row per member")
    p_doubt.add_argument("run", help="learn_labeler run folder or name")
    p_doubt.add_argument("--top", type=int, default=50, help="classes (default 50)")
    p_doubt.add_argument("--out", type=Path, default=None, help="write a CSV here (default: print it)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    gallery = open_gallery(args.run)
    if args.command == "show":
        print("\n".join(show(gallery, args.name, args.task)))
        return 0
    rows = doubtful_rows(gallery, max(args.top, 0))
    fields = ["rank", "global_class", "doubt", "spread", "split", "rival", "task", "local_label", "distance"]
    if not args.out:
        _write_rows(sys.stdout, fields, rows)
        return 0
    with replaced_atomically(args.out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        _write_rows(handle, fields, rows)
    print(f"{args.out}: {min(args.top, len(gallery.classes))} classes, {len(rows)} task classes")
    return 0


def _write_rows(handle, fields: list[str], rows: list[dict]) -> None:
    writer = csv.DictWriter(handle, fields)
    writer.writeheader()
    writer.writerows(rows)
