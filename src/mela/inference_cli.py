"""``mela predict``, ``mela embed`` and ``mela export``: use a trained model on new images.

    mela predict MODEL --support DIR --query FILE_OR_DIR ... [--out predictions.csv] [--head logistic]
    mela predict MODEL --tasks MANIFEST.csv --out predictions.csv
    mela embed MODEL IMAGES_OR_DIR ... --out features.npz
    mela export MODEL --out DIR [--format onnx torchscript]

MODEL is a model file, a folder written by ``mela export``, a run folder, a run name (STEP/NAME for one
step's run) or a pipeline run (its ``mela`` model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.reporting.progress import resolve_progress

PROGRESS_FROM = 2000  # images: below this a progress bar only flickers


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _load(args: argparse.Namespace):
    from mela.inference.model_io import load_trained_model

    trained = load_trained_model(args.model, args.device, args.workspace)
    for note in trained.notes:
        _note(note if note.startswith("note:") else f"note: {note}")
    return trained


def _progress(n_images: int) -> bool:
    return n_images >= PROGRESS_FROM and resolve_progress("auto")


def cmd_predict(args: argparse.Namespace) -> int:
    from mela.inference.predict import (
        predict_tasks,
        prediction_rows,
        task_from_folders,
        tasks_from_manifest,
        write_csv_atomic,
    )

    if args.top_k < 1:
        raise MelaError(f"--top-k must be at least 1, got {args.top_k}")
    if (args.tasks is None) == (args.support is None):
        raise MelaError("give either --support DIR with --query FILES_OR_DIRS, or --tasks MANIFEST.csv")
    if args.tasks is not None and args.query:
        raise MelaError("--query goes with --support; a manifest lists its queries itself (role query)")
    tasks = tasks_from_manifest(args.tasks) if args.tasks else [task_from_folders(args.support, args.query or [])]
    trained = _load(args)
    n_files = len({p for t in tasks for p, _ in [*t.support, *t.queries]})
    result = predict_tasks(trained, tasks, args.head, args.top_k, args.skip_bad, args.batch_size,
                           _progress(n_files), _note)
    for path, reason in result.skipped:
        _note(f"skipped {path}: {reason}")
    for name, reason in result.tasks_skipped:
        _note(f"skipped task '{name}': {reason}")
    if not result.predictions:
        raise MelaError("no query could be predicted (every query image or task was skipped; see above)")
    header, rows = prediction_rows(result, args.top_k)
    if args.out:
        write_csv_atomic(Path(args.out), header, rows)
    else:
        _print_table(header, rows)
    skipped = f"; skipped {len(result.skipped)} unreadable image(s)" if result.skipped else ""
    skipped += f" and {len(result.tasks_skipped)} task(s)" if result.tasks_skipped else ""
    accuracy = result.accuracy()
    scored = f"; accuracy on the {accuracy[1]} labelled queries: {accuracy[0]:.2f} %" if accuracy else ""
    print(f"{len(result.predictions)} queries in {len({p.task for p in result.predictions})} task(s), "
          f"head {args.head}{scored}{skipped}" + (f"\n{args.out}" if args.out else ""),
          file=sys.stderr if not args.out else sys.stdout)
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)


def cmd_embed(args: argparse.Namespace) -> int:
    from mela.inference.classifier import decode, features_of
    from mela.inference.predict import images_in

    out = Path(args.out).expanduser()
    if out.suffix not in (".npz", ".parquet"):
        raise MelaError(f"--out {out}: write features to a .npz (or .parquet with pyarrow installed) file")
    if out.suffix == ".parquet":
        _check_pyarrow()
    paths: list[Path] = []
    for item in args.images:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += images_in(path)
        elif path.exists():
            paths.append(path)
        else:
            raise MelaError(f"{path} does not exist; give image files or folders")
    if not paths:
        raise MelaError("no image files found in " + ", ".join(args.images))
    trained = _load(args)
    decoded = decode(trained, paths, _note, args.skip_bad, _progress(len(paths)))
    for i, reason in decoded.bad:
        _note(f"skipped {paths[i]}: {reason}")
    if not len(decoded.kept):
        raise MelaError("no readable image to embed")
    features = features_of(trained, decoded.pixels, args.batch_size, _progress(len(paths))).numpy()
    kept = [str(paths[i]) for i in decoded.kept]
    _write_features(out, kept, features, trained)
    print(f"{len(kept)} images, {features.shape[1]} features each" +
          (f", {len(decoded.bad)} skipped" if decoded.bad else "") + f"\n{out}")
    return 0


def _check_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MelaError("a .parquet output needs pyarrow (pip install pyarrow); or write .npz") from None


def _write_features(out: Path, paths: list[str], features: np.ndarray, trained) -> None:
    """paths + (N, d) float32 features, written through a temporary file and renamed (never half a file)."""
    from mela.inference.export import describe
    from mela.jsonio import dumps, replaced_atomically

    with replaced_atomically(out) as tmp:
        if out.suffix == ".npz":
            np.savez(tmp, paths=np.array(paths), features=features.astype(np.float32),
                     model=np.array(dumps(describe(trained), indent=None)))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"path": paths, "features": list(features.astype(np.float32))}), tmp)


def cmd_export(args: argparse.Namespace) -> int:
    from mela.inference.export import export_model

    trained = _load(args)
    formats = tuple(dict.fromkeys(["safetensors", *(args.format or [])]))
    out = export_model(trained, args.out, formats, overwrite=args.force)
    for name in sorted(p.name for p in out.iterdir()):
        print(out / name)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file, exported folder, run folder, run name (STEP/NAME) or pipeline run")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--workspace", default=None, help="where run names are looked up (default: $WORKSPACE)")


def build_parser() -> argparse.ArgumentParser:
    from mela.inference.export import FORMATS
    from mela.methods.heads import HEAD_NAMES

    parser = argparse.ArgumentParser(prog="mela", description="Use a trained model on new images.")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="few-shot predictions for the queries of new tasks")
    _common(predict)
    predict.add_argument("--support", help="folder of class folders: <class name>/<image files>")
    predict.add_argument("--query", nargs="+", help="query image files or folders")
    predict.add_argument("--tasks", help="CSV manifest task,role,path,label (role support or query)")
    predict.add_argument("--out", help="write the predictions to this CSV (default: print them)")
    predict.add_argument("--head", default="logistic", choices=HEAD_NAMES,
                         help="few-shot head (default logistic, meta_eval's)")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per query (default 3)")
    predict.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of stopping")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.set_defaults(run=cmd_predict)
    embed = sub.add_parser("embed", help="features of images, to a .npz (or .parquet)")
    _common(embed)
    embed.add_argument("images", nargs="+", help="image files or folders")
    embed.add_argument("--out", required=True, help="features.npz (paths, features, model) or .parquet")
    embed.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of stopping")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.set_defaults(run=cmd_embed)
    export = sub.add_parser("export", help="model.safetensors + mela_model.json (and ONNX / TorchScript)")
    _common(export)
    export.add_argument("--out", required=True, help="the folder to write")
    export.add_argument("--format", nargs="+", choices=FORMATS, help="also write these (onnx needs mela[export])")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(run=cmd_export)
    return parser


def main(command: str, argv: list[str]) -> int:
    """Run ``mela COMMAND argv...``; usage errors are one line (argparse's own exit code 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args([command, *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    if getattr(args, "batch_size", 1) < 1:
        raise MelaError(f"--batch-size must be at least 1, got {args.batch_size}")
    return args.run(args)
