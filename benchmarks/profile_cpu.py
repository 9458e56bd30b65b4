"""Where a training epoch's time goes on the CPU, fp32 against bf16: the demo's learn_meta_repr epoch (episodic ridge
steps), its validation, and a pre-training epoch (learn_labeler / sup_baseline's supervised steps).

Each stage of the engine's own epoch functions is timed by wrapping the function the epoch calls for it (the
network forward under autocast, the ridge loss, backward + SGD, augmentation; the rest of a step is task drawing,
indexing and Python), on the built-in glyphs with the demo's settings (convnet4, 5-way 5-shot 5-query tasks,
4 tasks a step, 284 tasks an epoch; 200 validation tasks at 1 and 5 shots; supervised batches of 128). With
``--torch-profile`` the epoch also runs under ``torch.profiler`` and the top operators are listed.
Writes ``benchmarks/results/profile_cpu[_<tag>].json`` and ``.md``.

    python benchmarks/profile_cpu.py                 # fp32 and bf16 (with channels_last where auto turns it on)
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mela.api import open_dataset
from mela.compute import Compute
from mela.data.augment import AugmentSettings
from mela.data.samplers import TaskShape, TaskSource
from mela.device import place_images
from mela.engine import episodic, supervised
from mela.engine.episodic import RidgeLossSettings, episodic_epoch
from mela.engine.precision import native_cpu_bf16
from mela.engine.supervised import supervised_epoch
from mela.engine.trainer import ValidationSettings, make_validator
from mela.methods.evaluator import EvalProtocol
from mela.models.feature_model import Classifier, FeatureModel, ModelSpec

RESULTS = Path(__file__).parent / "results"


class Stopwatch:
    """Seconds spent inside each wrapped stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


class TimedCompute(Compute):
    """A :class:`Compute` whose forward pass is timed."""

    def __init__(self, compute: Compute, watch: Stopwatch) -> None:
        super().__init__(compute.device_type, compute.precision, compute.channels_last)
        object.__setattr__(self, "_watch", watch)

    def forward(self, module, x):
        return self._watch.wrap("forward", super().forward)(module, x)


def profile(precision: str, channels_last: bool, data, torch_profile: bool) -> dict:
    train, val = data.split("train"), data.split("val")
    mean, std = data.spec.mean, data.spec.std
    device = torch.device("cpu")
    compute = Compute("cpu", precision, channels_last)
    watch = Stopwatch()
    torch.manual_seed(0)
    model = compute.prepare(FeatureModel(ModelSpec("convnet4", {"in_channels": train.images.shape[-1]})))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    shape = TaskShape(5, 5, 5)
    source = TaskSource(train, shape, True, True, 2800, 0)
    augmenter = AugmentSettings(enabled=False).build(mean, std)
    patches = {(episodic, "ridge_loss_or_diverged"): "ridge loss", (episodic, "descend"): "backward + SGD",
               (supervised, "descend"): "backward + SGD"}
    saved = {key: getattr(*key) for key in patches}
    for (module, name), stage in patches.items():
        setattr(module, name, watch.wrap(stage, saved[(module, name)]))
    try:
        timed_augmenter = watch.wrap("augment + normalise", augmenter)
        run = episodic_epoch(model, optimizer, source, shape, place_images(train.images, device), train.item_images(),
                             timed_augmenter, RidgeLossSettings(), device, 0, tasks_per_step=4,
                             compute=TimedCompute(compute, watch))
        run(0)  # warm-up: kernel choice, allocator, first touch
        watch.seconds.clear()
        start = time.perf_counter()
        if torch_profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                run(1)
        else:
            run(1)
        episodic_total = time.perf_counter() - start
        episodic_stages = dict(watch.seconds)
        validation = ValidationSettings((TaskShape(5, 1, 15), TaskShape(5, 5, 15)), 200, EvalProtocol())
        validate = make_validator(model, val, mean, std, validation, device, compute)
        start = time.perf_counter()
        validate()
        validation_total = time.perf_counter() - start
        watch.seconds.clear()
        classifier = compute.prepare(Classifier(model, [int(train.n_classes)]))
        sup_optimizer = torch.optim.SGD(classifier.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sup = supervised_epoch(classifier, sup_optimizer, place_images(train.images, device), train.item_images(),
                               [train.labels], [int(train.n_classes)], timed_augmenter, 128, device, 0,
                               compute=TimedCompute(compute, watch))
        sup(0)
        watch.seconds.clear()
        start = time.perf_counter()
        sup(1)
        supervised_total = time.perf_counter() - start
        supervised_stages = dict(watch.seconds)
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
    result = {
        "precision": precision, "channels_last": channels_last,
        "episodic": {"seconds": round(episodic_total, 3), "tasks": len(source),
                     "images_per_s": round(len(source) * shape.n_ways * shape.per_class / episodic_total, 1),
                     "stages": {k: round(v, 3) for k, v in episodic_stages.items()}},
        "validation": {"seconds": round(validation_total, 3), "tasks": 400},
        "supervised": {"seconds": round(supervised_total, 3), "images": train.n_items,
                       "images_per_s": round(train.n_items / supervised_total, 1),
                       "stages": {k: round(v, 3) for k, v in supervised_stages.items()}},
    }
    for part in ("episodic", "supervised"):
        stages = result[part]["stages"]
        stages["other (tasks, indexing, Python)"] = round(result[part]["seconds"] - sum(stages.values()), 3)
    if torch_profile:
        result["top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return result


def markdown(result: dict) -> str:
    lines = [f"CPU: {result['cpu']}; native bfloat16: {result['native_bf16'] or 'no'}; torch {result['torch']}, "
             f"{result['threads']} threads.", "",
             "| part | stage | " + " | ".join(f"{r['precision']}{' + CL' if r['channels_last'] else ''}"
                                          for r in result["rows"]) + " |",
             "|---|---|" + "---|" * len(result["rows"])]
    for part in ("episodic", "supervised"):
        stages = list(result["rows"][0][part]["stages"])
        for stage in stages:
            cells = [f"{r[part]['stages'].get(stage, 0):.2f} s" for r in result["rows"]]
            lines.append(f"| {part} epoch | {stage} | " + " | ".join(cells) + " |")
        cells = [f"**{r[part]['seconds']:.2f} s** ({r[part]['images_per_s']:.0f} img/s)" for r in result["rows"]]
        lines.append(f"| {part} epoch | total | " + " | ".join(cells) + " |")
    cells = [f"{r['validation']['seconds']:.2f} s" for r in result["rows"]]
    lines.append("| validation (200 tasks x 1, 5 shots) | total | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="fp32:0,fp32:1,bf16:1", help="precision:channels_last, comma-separated")
    parser.add_argument("--tag", default="")
    parser.add_argument("--torch-profile", action="store_true")
    args = parser.parse_args()
    from train_throughput import device_name  # noqa: PLC0415 - the CPU in words, as the throughput table names it

    data = open_dataset("glyphs")
    rows = []
    for variant in args.variants.split(","):
        precision, cl = variant.split(":")
        rows.append(profile(precision, cl == "1", data, args.torch_profile))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "top_ops"}))
    result = {"cpu": device_name(torch.device("cpu")), "native_bf16": native_cpu_bf16(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}
    suffix = f"_{args.tag}" if args.tag else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile_cpu{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"profile_cpu{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    for row in rows:
        if "top_ops" in row:
            print(row["precision"], row["channels_last"])
            print(row["top_ops"])


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
