"""The demo pipeline (`mela pipeline`, seed 0) in bf16 and in fp32 on this CPU: wall time per step, learn_meta_repr's
images/s, and the results table of each, side by side.

Runs ``mela pipeline`` twice, one after the other (nothing else should run): once as ``precision=auto`` picks on
this processor with ``MELA_CPU_BF16`` unset (bf16 where the CPU has native bfloat16), once with
``MELA_CPU_BF16=0`` (fp32). Step times come from each step's ``log.txt`` (first to last line, 1 s resolution);
the per-epoch times of learn_meta_repr from its ``history.json``. ``--parse`` only reads two finished runs.
Writes ``benchmarks/results/pipeline_precision.json`` and ``.md``.

    python benchmarks/pipeline_precision.py --workspace /tmp/pp              # both runs (about 6 minutes here)
    python benchmarks/pipeline_precision.py --workspace /tmp/pp --parse      # runs bf16 and fp32 already there
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from mela.engine.precision import native_cpu_bf16

RESULTS = Path(__file__).parent / "results"
STEPS = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", "meta_eval")
IMAGES_PER_EPOCH = 284 * 5 * 10  # the demo's learn_meta_repr: 284 tasks of 5 classes x (5 shots + 5 queries)


def step_seconds(log: Path) -> float:
    """Seconds from a step log's first line to its last (``YYYY-MM-DD HH:MM:SS`` stamps)."""
    stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in log.read_text().splitlines()
              if len(line) > 19 and line[4] == "-" and line[13] == ":"]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else float("nan")


def summarise(saves: Path, run: str) -> dict:
    """Per-step seconds, learn_meta_repr's images/s and the pipeline's results of run ``run``."""
    steps = {}
    for step in STEPS:
        logs = sorted(saves.glob(f"{step}/{run}*/log.txt"))
        steps[step] = sum(step_seconds(log) for log in logs)
    history = json.loads((saves / "learn_meta_repr" / run / "history.json").read_text())
    entries = history if isinstance(history, list) else history.get("history", [])
    epoch_s = [float(e["seconds"]) for e in entries if "seconds" in e]  # training, and validation from the decay
    results = json.loads((saves / "pipeline" / run / "results.json").read_text())
    return {"steps_s": steps, "pipeline_s": results["seconds"],
            "meta_repr_epoch_s": epoch_s, "meta_repr_images_per_s":
                round(IMAGES_PER_EPOCH / statistics.median(epoch_s), 1) if epoch_s else None,
            "rows": results["rows"], "labeler": results.get("labeler")}


def first_line(saves: Path, run: str) -> str:
    return (saves / "learn_meta_repr" / run / "log.txt").read_text().splitlines()[0].split("| ", 1)[-1]


def markdown(result: dict) -> str:
    bf16, fp32 = result["bf16"], result["fp32"]
    lines = [f"CPU: {result['cpu']}; native bfloat16: {result['native_bf16'] or 'no'}.", "",
             "| step | fp32 (s) | bf16 (s) | bf16 / fp32 |", "|---|---|---|---|"]
    for step in STEPS:
        a, b = fp32["steps_s"][step], bf16["steps_s"][step]
        lines.append(f"| {step} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
    lines.append(f"| pipeline | {fp32['pipeline_s']:.0f} | {bf16['pipeline_s']:.0f} | "
                 f"{bf16['pipeline_s'] / fp32['pipeline_s']:.2f} |")
    lines += ["", f"learn_meta_repr images/s (median epoch): fp32 {fp32['meta_repr_images_per_s']}, "
              f"bf16 {bf16['meta_repr_images_per_s']}", "", "| model | shots | fp32 | bf16 |", "|---|---|---|---|"]
    for a, b in zip(fp32["rows"], bf16["rows"], strict=True):
        lines.append(f"| {a['model']} | {a.get('column', a.get('shots'))} | {a['acc']:.2f} ± {a['ci']:.2f} | "
                     f"{b['acc']:.2f} ± {b['ci']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--parse", action="store_true", help="read runs bf16 and fp32 already in the workspace")
    args = parser.parse_args()
    if not args.parse:
        for run, env in (("bf16", {}), ("fp32", {"MELA_CPU_BF16": "0"})):
            environment = {k: v for k, v in os.environ.items() if k != "MELA_CPU_BF16"} | env
            subprocess.run([sys.executable, "-m", "mela", "pipeline", f"workspace={args.workspace}",
                            f"run_name={run}", "progress=false"], env=environment, check=True)
    saves = Path(args.workspace) / "checkpoint" / "label_learn" / "saves"
    import torch  # noqa: PLC0415
    from train_throughput import device_name  # noqa: PLC0415 - the CPU in words, as the throughput table names it

    result = {"cpu": device_name(torch.device("cpu")), "native_bf16": native_cpu_bf16(),
              "first_log_line": {run: first_line(saves, run) for run in ("bf16", "fp32")},
              "bf16": summarise(saves, "bf16"), "fp32": summarise(saves, "fp32")}
    for part in ("bf16", "fp32"):
        for row in result[part]["rows"]:
            row.pop("per_task", None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_precision.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (RESULTS / "pipeline_precision.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
