"""Does bf16 training move the demo's meta_repr beyond its seed-to-seed spread? learn_meta_repr as the demo
pipeline trains it (convnet4, 6 epochs, decay at 4 and 5, 4 tasks a step, 5-way 5-shot 5-query, no
augmentation), then 1000 test tasks at 1 and 5 shots (15 queries), for several seeds, in fp32 and in bf16.

Each seed trains twice, fp32 then bf16 (each evaluated in its own precision, as meta_eval does under
``precision=auto``). Writes ``benchmarks/results/bf16_meta_repr_seeds.json`` and ``.md``.

    python benchmarks/bf16_meta_repr_seeds.py --seeds 0,1,2      # about 4 minutes on 2 cores with bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mela.api import create_model, evaluate, meta_train
from mela.data.augment import AugmentSettings
from mela.data.samplers import TaskShape
from mela.engine.episodic import EpisodicSettings, RidgeLossSettings
from mela.engine.precision import ComputeSettings, native_cpu_bf16
from mela.engine.trainer import OptimSettings, ValidationSettings
from mela.methods.evaluator import EvalProtocol

RESULTS = Path(__file__).parent / "results"


def demo_settings(seed: int, precision: str) -> EpisodicSettings:
    shape = TaskShape(5, 5, 5)
    return EpisodicSettings(
        shape=shape, optim=OptimSettings(6, 0.05, lr_decay_epochs=(4, 5)),
        validation=ValidationSettings((TaskShape(5, 1, 5), TaskShape(5, 5, 5)), 200, EvalProtocol()),
        augment=AugmentSettings(False, False), loss=RidgeLossSettings(), tasks_per_step=4, seed=seed,
        report=None, compute=ComputeSettings(precision))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(seed)
            start = time.perf_counter()
            model = create_model("convnet4", in_channels=1)
            trained = meta_train(model, "glyphs", settings=demo_settings(seed, precision), log=None).model
            results = evaluate(trained, "glyphs", shots=(1, 5), compute=ComputeSettings(precision))
            rows.append({"seed": seed, "precision": precision, "seconds": round(time.perf_counter() - start, 1),
                         **{f"{r.shots}shot": [round(r.acc, 2), round(r.ci, 2)] for r in results}})
            print(rows[-1], flush=True)
    summary = {}
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r["precision"] == precision]
        for shots in ("1shot", "5shot"):
            values = [r[shots][0] for r in mine]
            summary[f"{precision} {shots}"] = {"mean": round(statistics.mean(values), 2),
                                               "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None}
    result = {"native_bf16": native_cpu_bf16(), "rows": rows, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_meta_repr_seeds.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| seed | fp32 1-shot | bf16 1-shot | fp32 5-shot | bf16 5-shot |", "|---|---|---|---|---|"]
    for seed in sorted({r["seed"] for r in rows}):
        fp32, bf16 = (next(r for r in rows if r["seed"] == seed and r["precision"] == p) for p in ("fp32", "bf16"))
        lines.append(f"| {seed} | {fp32['1shot'][0]:.2f} ± {fp32['1shot'][1]:.2f} | {bf16['1shot'][0]:.2f} ± "
                     f"{bf16['1shot'][1]:.2f} | {fp32['5shot'][0]:.2f} ± {fp32['5shot'][1]:.2f} | "
                     f"{bf16['5shot'][0]:.2f} ± {bf16['5shot'][1]:.2f} |")
    lines.append("| mean (sd over seeds) | " + " | ".join(
        f"{summary[k]['mean']:.2f} ({summary[k]['sd']})" for k in ("fp32 1shot", "bf16 1shot", "fp32 5shot",
                                                                   "bf16 5shot")) + " |")
    (RESULTS / "bf16_meta_repr_seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
