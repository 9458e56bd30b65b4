"""Does augmentation help or hurt? The demo pipeline with and without it, on dark and light glyphs.

Four runs of ``mela pipeline`` (the `make demo` defaults, seeded): the built-in glyphs (ink bright on
black) and the light-background variant (255 - pixels, same classes and split, as a custom data set),
each with mela 0.3's augmentation (reflect-padded crops, no jitter, no flips, in the labeler's pre-training,
fine_tune and the oracle; ``AUG_ON``) and with every augmentation off (the pipeline's default since 0.4). Writes the
four rows of each run and their differences to benchmarks/results/augmentation.{json,md}. A difference
is "within the CI" when it is at most the larger of the two 95 % half-widths.

    python benchmarks/augmentation.py              # ~35 min on 2 CPU cores
    python benchmarks/augmentation.py --variants light --workspace /tmp/aug
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
AUG_ON = ["learn_labeler.sup_data_aug=true", "fine_tune.data_aug=true", "sup_baseline.data_aug=true"]
AUG_OFF = ["learn_meta_repr.data_aug=false", "learn_labeler.sup_data_aug=false", "fine_tune.data_aug=false",
           "sup_baseline.data_aug=false"]


def light_glyphs(folder: Path) -> list[str]:
    """The built-in glyphs with black ink on white (255 - pixels), as a custom data set with the same split."""
    from mela.data import glyphs

    images, labels, split = [], [], {}
    for part in ("train", "val", "test"):
        data = glyphs.load(Path("."), part)
        names = [f"{part}{c:04d}" for c in range(len(data.class_names))]
        images.append(255 - data.images[..., 0])
        labels.append(np.array(names)[data.labels])
        split[part] = names
    np.savez(folder / "glyphs_light.npz", images=np.concatenate(images), labels=np.concatenate(labels))
    (folder / "glyphs_light_split.json").write_text(json.dumps(split))
    return ["dataset=custom", f"custom_path={folder / 'glyphs_light.npz'}",
            f"custom_split={folder / 'glyphs_light_split.json'}", "image_size=32"]


def run_pipeline(args: list[str], workspace: Path, run_name: str) -> dict:
    command = [str(Path(sys.executable).parent / "mela"), "pipeline", f"workspace={workspace}", f"run_name={run_name}",
               "progress=false", "plots=false", "tensorboard=false", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    results = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    results["wall_seconds"] = time.perf_counter() - start
    return results


def accuracy(results: dict, row: str, shots: int) -> tuple[float, float]:
    for entry in results["rows"]:
        if entry["model"] == row and entry["shots"] == shots and "column" not in entry:
            return entry["acc"], entry["ci"]
    raise KeyError((row, shots))


def compare(on: dict, off: dict) -> list[dict]:
    out = []
    for row in ("meta_repr", "mela", "mela_finetune", "oracle"):
        for shots in (1, 5):
            (a, ca), (b, cb) = accuracy(on, row, shots), accuracy(off, row, shots)
            out.append({"row": row, "shots": shots, "aug": [a, ca], "no_aug": [b, cb], "difference": a - b,
                        "worse_beyond_ci": bool(a - b < -max(ca, cb))})
    return out


def markdown(table: dict[str, list[dict]]) -> str:
    lines = ["| data | row | shots | augmentation | none | difference | worse beyond CI |", "|---" * 7 + "|"]
    for variant, rows in table.items():
        for r in rows:
            lines.append(f"| {variant} | {r['row']} | {r['shots']} | {r['aug'][0]:.2f} ± {r['aug'][1]:.2f} | "
                         f"{r['no_aug'][0]:.2f} ± {r['no_aug'][1]:.2f} | {r['difference']:+.2f} | "
                         f"{'yes' if r['worse_beyond_ci'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=["dark", "light"], choices=["dark", "light"])
    parser.add_argument("--workspace", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", default="augmentation")
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="mela-aug-"))
    workspace.mkdir(parents=True, exist_ok=True)
    table, raw = {}, {}
    for variant in args.variants:
        data = ["dataset=glyphs"] if variant == "dark" else light_glyphs(workspace)
        on = run_pipeline(data + AUG_ON, workspace, f"{variant}_aug")
        off = run_pipeline(data + AUG_OFF, workspace, f"{variant}_noaug")
        raw[variant] = {"aug": on, "no_aug": off}
        table[variant] = compare(on, off)
        print(markdown({variant: table[variant]}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"comparison": table, "runs": raw}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(table))
    print(RESULTS / f"{args.out}.md")


if __name__ == "__main__":
    main()
