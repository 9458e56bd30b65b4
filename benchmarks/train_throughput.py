"""Training throughput (images/s) of mela's own step functions: fp32, fp32 + channels_last, bf16, bf16 + channels_last.

Two steps, each the engine's real epoch function (augmentation on the device, autocast around the network
pass, float32 ridge solve / cross-entropy after it, SGD with momentum):

- ``episodic``: learn_meta_repr's step (``mela.engine.episodic.episodic_epoch``), ridge loss + regularisers;
- ``supervised``: the pre-training step of learn_labeler / sup_baseline (``mela.engine.supervised.supervised_epoch``).

for convnet4 at 32 px and resnet12 at 84 px (random uint8 images, 3 channels or ``--channels 1``; the pixels do not
matter to the speed).
Each variant times ``--steps`` optimiser steps per call after one warm-up call and reports the median over up to
``--repeats`` calls, taken in turns with the other variants of its cell so that the load of a shared machine falls
on all four alike; a variant that has used ``--budget`` seconds makes no further call, and one whose warm-up alone
took longer is measured by its warm-up (bf16 on a CPU without native bfloat16: 10 to 40 s a call; marked).
Batch sizes are per device (``SIZES``): small on the CPU, so the whole run takes about five minutes on 2 cores;
the reference's on a GPU. Writes ``benchmarks/results/train_throughput_<device>.json`` and ``.md`` (the table).

    python benchmarks/train_throughput.py                  # the CPU (default when no GPU)
    python benchmarks/train_throughput.py --device cuda    # benchmarks/gpu_check.sh runs this on a GPU machine
    python benchmarks/train_throughput.py --precisions fp32 --repeats 11 --budget 90 --tag channels_last
                                                           # channels_last alone, more repeats (what auto follows)
    python benchmarks/train_throughput.py --models convnet4 --channels 1 --precisions fp32 --repeats 11 --budget 90 \
        --tag channels_last_grey                           # the same on 1-channel images (the glyph demo)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mela.data.augment import AugmentSettings
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, TaskSource
from mela.device import pick_device, place_images
from mela.engine.episodic import RidgeLossSettings, episodic_epoch
from mela.engine.precision import Compute
from mela.engine.supervised import supervised_epoch
from mela.models.feature_model import Classifier, FeatureModel, ModelSpec

RESULTS = Path(__file__).parent / "results"
MEAN, STD = (0.47, 0.45, 0.40), (0.28, 0.27, 0.28)
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
# Per device type and backbone: (input px, episodic task shape, tasks per step, supervised batch size).
SIZES = {
    "cpu": {"convnet4": (32, TaskShape(5, 5, 5), 4, 128), "resnet12": (84, TaskShape(2, 1, 1), 1, 4)},
    "cuda": {"convnet4": (32, TaskShape(5, 5, 5), 4, 128), "resnet12": (84, TaskShape(5, 5, 15), 1, 64)},
}


def device_name(device: torch.device) -> str:
    """What the row ran on, in words: the GPU's name, or the CPU's model, threads and vector extensions."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages: a shared machine's other work shows here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def synthetic_split(size: int, n_classes: int = 10, per_class: int = 20, channels: int = 3) -> ImageSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_classes * per_class, size, size, channels), dtype=np.uint8)
    return ImageSplit(images, np.repeat(np.arange(n_classes), per_class))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_function(kind: str, backbone: str, device: torch.device, compute: Compute, steps: int, channels: int = 3):
    """One call trains ``steps`` optimiser steps; returns (call, images per call)."""
    size, shape, tasks_per_step, batch_size = SIZES[device.type][backbone]
    split = synthetic_split(size, max(10, shape.n_ways), max(20, shape.per_class), channels)
    torch.manual_seed(0)
    model = FeatureModel(ModelSpec(backbone, {"in_channels": channels})).to(device)
    pixels = place_images(split.images, device)
    augmenter = AugmentSettings(enabled=True, flip=True).build(MEAN[:channels], STD[:channels])
    if kind == "episodic":
        compute.prepare(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        source = TaskSource(split, shape, no_replacement=False, fixed_db=False,
                            train_db_size=steps * tasks_per_step, seed=0)
        run = episodic_epoch(model, optimizer, source, shape, pixels, split.item_images(), augmenter,
                             RidgeLossSettings(), device, seed=0, tasks_per_step=tasks_per_step, compute=compute)
        return run, steps * tasks_per_step * shape.n_ways * shape.per_class
    classifier = compute.prepare(Classifier(model, [int(split.n_classes)]).to(device))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rows = np.resize(split.item_images(), steps * batch_size)  # the epoch visits exactly ``steps`` batches
    run = supervised_epoch(classifier, optimizer, pixels, rows, [np.resize(split.labels, len(rows))],
                           [int(split.n_classes)], augmenter, batch_size, device, seed=0, compute=compute)
    return run, len(rows)


def time_variants(kind: str, backbone: str, device: torch.device, steps: int, repeats: int,
                  budget: float, precisions: tuple[str, ...] = ("fp32", "bf16"), channels: int = 3) -> list[dict]:
    """Time the four variants of one (model, step) cell in turns, so a change in the machine's load (it is shared)
    falls on all of them alike; one warm-up call each first (kernel selection, allocator, first touch)."""
    variants = []
    for precision, channels_last in VARIANTS:
        if precision not in precisions:
            continue
        run, images = step_function(kind, backbone, device, Compute(device.type, precision, channels_last), steps,
                                    channels)
        start = time.perf_counter()
        run(0)
        sync(device)
        warmup = time.perf_counter() - start
        # A variant whose warm-up alone outlasts the budget (bf16 on a CPU without bfloat16) is not called again:
        # its warm-up is its one measurement, which is marked.
        variants.append({"precision": precision, "channels_last": channels_last, "steps_per_call": steps,
                         "run": run, "images": images, "seconds": [warmup] if warmup > budget else [],
                         "warmup_only": warmup > budget})
    for call in range(1, repeats + 1):
        for variant in variants:
            if variant["seconds"] and sum(variant["seconds"]) >= budget:
                continue
            start = time.perf_counter()
            variant["run"](call)
            sync(device)
            variant["seconds"].append(time.perf_counter() - start)
    rows = []
    for variant in variants:
        median = statistics.median(variant["seconds"])
        rows.append({"precision": variant["precision"], "channels_last": variant["channels_last"],
                     "steps_per_call": variant["steps_per_call"], "images_per_call": variant["images"],
                     "calls_timed": len(variant["seconds"]), "warmup_only": variant["warmup_only"],
                     "median_s_per_call": round(median, 4), "images_per_s": float(f"{variant['images'] / median:.3g}")})
    return rows


def markdown(result: dict) -> str:
    lines = ["| device | model | step | images / step | fp32 | fp32 + channels_last | bf16 | bf16 + channels_last |",
             "|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, dict] = {}
    for row in result["rows"]:
        cells.setdefault((row["model"], row["step"]), {})[(row["precision"], row["channels_last"])] = row
    for (model, step), by_variant in cells.items():
        base = by_variant.get(("fp32", False), {}).get("images_per_s")
        texts = []
        for variant in VARIANTS:
            row = by_variant.get(variant)
            if row is None:
                texts.append("-")
                continue
            ratio = f" ({row['images_per_s'] / base:.2f}x)" if base and variant != ("fp32", False) else ""
            texts.append(f"{row['images_per_s']:g}{ratio}{'*' if row['warmup_only'] else ''}")
        per_step = next(iter(by_variant.values()))["images_per_step"]
        lines.append(f"| {result['device']} | {model} {next(iter(by_variant.values()))['size']} px | {step} | "
                     f"{per_step} | " + " | ".join(texts) + " |")
    note = (f"\n{result['channels']}-channel images; images/s, median of up to {result['repeats']} timed calls of "
            f"{result['steps_per_call']} step(s) after a warm-up call, variants timed in turns; (Nx): against fp32; "
            f"*: the warm-up call alone outlasted the {result['budget_s']:g} s budget and is the only measurement. "
            f"Load average before / after: {result['load_average_before']} / {result['load_average_after']}; "
            f"total {result['total_s']} s.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--models", default="convnet4,resnet12")
    parser.add_argument("--precisions", default="fp32,bf16", help="which precisions to time (each with and without "
                        "channels_last)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="image channels (1: glyph-like)")
    parser.add_argument("--tag", default="", help="suffix of the result files (train_throughput_<device>_<tag>)")
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps per timed call (0: per device)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell, at most")
    parser.add_argument("--budget", type=float, default=8.0,
                        help="seconds per variant after which it makes no further call")
    args = parser.parse_args()
    device = pick_device(args.device)
    steps = args.steps or (1 if device.type == "cpu" else 20)
    result = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
              "steps_per_call": steps, "channels": args.channels, "repeats": args.repeats, "budget_s": args.budget,
              "load_average_before": _load_average(), "rows": []}
    started = time.perf_counter()
    for backbone in args.models.split(","):
        size, shape, tasks_per_step, batch_size = SIZES[device.type][backbone]
        for kind in ("episodic", "supervised"):
            per_step = tasks_per_step * shape.n_ways * shape.per_class if kind == "episodic" else batch_size
            for cell in time_variants(kind, backbone, device, steps, args.repeats, args.budget,
                                      tuple(args.precisions.split(",")), args.channels):
                row = {"model": backbone, "size": size, "step": kind, "images_per_step": per_step, **cell}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["load_average_after"] = _load_average()
    RESULTS.mkdir(exist_ok=True)
    stem = f"train_throughput_{device.type}" + (f"_{args.tag}" if args.tag else "")
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(result, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(out)


if __name__ == "__main__":
    main()
