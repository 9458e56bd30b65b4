"""1 vs 2 processes on the CPU: images/s of learn_meta_repr (convnet4, built-in glyphs at 32 px) under torchrun.

Each configuration is a real `mela learn-meta-repr` launch: one plain process (torch's default threads), and
`torchrun --standalone --nproc_per_node 2` (gloo, one thread per rank, as torchrun sets by default). The
global batch is the same (tasks_per_step tasks of 5-way 5-shot 5-query per step), so the two train on the
same tasks per epoch. Throughput is taken from the epochs that do not validate, after the first (warm-up).
Writes benchmarks/results/ddp_cpu.json.

    python benchmarks/ddp_cpu.py [--tasks 24] [--epochs 4] [--tasks-per-step 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"


def launch(processes: int, args: list[str], workspace: Path) -> tuple[float, str]:
    env = {**os.environ, "WORKSPACE": str(workspace), "PYTHONPATH": os.pathsep.join([str(SRC),
                                                                                   os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        command = [sys.executable, "-m", "mela.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), "-m", "mela.cli", *args]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24, help="train_db_size (the pile holds at most this many tasks)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tasks-per-step", type=int, default=4)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    opts = parser.parse_args()
    n_ways, shots, queries = 5, 5, 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in opts.processes:
            args = ["learn-meta-repr", "dataset=glyphs", "model=convnet4", f"epochs={opts.epochs}",
                    f"lr_decay_epochs={opts.epochs}", f"train_db_size={opts.tasks}",
                    f"tasks_per_step={opts.tasks_per_step}", f"n_ways={n_ways}", f"n_shots={shots}",
                    f"n_queries={queries}", "test_db_size=20", "val_shots=[1,5]", "device=cpu", "plots=false",
                    "tensorboard=false", "progress=false", f"run_name=p{processes}"]
            workspace = Path(tmp) / f"ws{processes}"
            wall, _ = launch(processes, args, workspace)
            run_dir = workspace / "checkpoint" / "label_learn" / "saves" / "learn_meta_repr" / f"p{processes}"
            history = json.loads((run_dir / "history.json").read_text())
            # The fixed pile holds what the classes allow (at most train_db_size tasks): the log says how many.
            tasks = int(re.search(r"(\d+) training tasks per epoch", (run_dir / "log.txt").read_text()).group(1))
            timed = [h["seconds"] for h in history if 1 < h["epoch"] < opts.epochs]  # no warm-up, no validation
            seconds = sum(timed) / len(timed)
            images_per_epoch = tasks * n_ways * (shots + queries)
            rows.append({"processes": processes, "tasks_per_epoch": tasks, "images_per_epoch": images_per_epoch,
                         "seconds_per_epoch": round(seconds, 3),
                         "seconds_each_epoch": [round(h["seconds"], 2) for h in history],
                         "images_per_s": round(images_per_epoch / seconds, 1),
                         "train_loss_per_epoch": [round(h["loss"], 4) for h in history],
                         "val_5shot_last": history[-1].get("val_5shot"), "wall_s": round(wall, 1),
                         "tasks_seen_per_epoch": history[-1].get("tasks_seen", tasks)})
            print(rows[-1], flush=True)
    load = os.getloadavg()
    out = {"benchmark": "ddp_cpu", "device": f"CPU ({platform.processor() or platform.machine()}, "
                                              f"{os.cpu_count()} cores)",
           "torch": torch.__version__, "model": "convnet4", "data": "glyphs 32 px",
           "train_db_size": opts.tasks, "tasks_per_step": opts.tasks_per_step, "epochs": opts.epochs,
           "load_average_after": [round(v, 2) for v in load], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "ddp_cpu.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
