"""Using a trained model on image files: one few-shot task by phase, and `embed` throughput.

1. One 5-way 5-shot task with 75 queries, from PNG files (unseen glyph classes), through ``mela predict``'s
   code path: decode (read + convert the files), features (the network), head (logistic regression fit on
   the support, probabilities of the queries). Median of ``--repeats`` runs, each phase timed separately.
2. ``embed`` images/s from files for convnet4 at 32 px (1 channel, glyphs) and resnet12 at 84 px (RGB, random
   images), against the training loader's path on the same images already in memory (``extract_features`` on
   the uint8 array, as meta_eval and validation run it), in the same process, one after the other.

Weights do not change the timings, so the models are fresh ones with the glyphs' preprocessing recorded.
Results: benchmarks/results/inference.json (the device and processor named).

    python benchmarks/inference.py              # ~1-2 min on a 2-core CPU
    python benchmarks/inference.py --repeats 3  # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mela
from mela.data.preprocessing import Preprocessing
from mela.device import pick_device
from mela.inference.classifier import decode, features_of
from mela.inference.model_io import load_trained_model
from mela.inference.predict import predict_tasks, task_from_folders
from mela.methods.evaluator import extract_features

RESULTS = Path(__file__).parent / "results"


def processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_with(name: str, channels: int, size: int, device: torch.device) -> mela.FeatureModel:
    model = mela.create_model(name, in_channels=channels)
    model.preprocessing = Preprocessing((size, size), channels, (0.5,) * channels, (0.25,) * channels)
    return model.to(device).eval()


def write_task(folder: Path) -> tuple[Path, Path]:
    """5 unseen glyph classes: 5 support images each in class folders, 15 queries each in one folder."""
    test = mela.open_dataset("glyphs").split("test")
    for c in range(5):
        rows = np.flatnonzero(test.labels == c)[:20]
        for i, row in enumerate(rows):
            path = folder / ("support" if i < 5 else "query") / (f"glyph{c}" if i < 5 else "") / f"{c}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(test.images[row][..., 0]).save(path)
    return folder / "support", folder / "query"


def time_task(folder: Path, device: torch.device, repeats: int) -> dict:
    support, query = write_task(folder)
    trained = load_trained_model(model_with("convnet4", 1, 32, device), device)
    task = task_from_folders(support, [query])
    files = [p for p, _ in [*task.support, *task.queries]]
    phases: dict[str, list[float]] = {"decode": [], "features": [], "head": [], "total (predict_tasks)": []}
    predict_tasks(trained, [task])  # warm-up: first calls allocate and pick kernels
    for _ in range(repeats):
        start = time.perf_counter()
        decoded = decode(trained, files)
        phases["decode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        features_of(trained, decoded.pixels)
        phases["features"].append(time.perf_counter() - start)
        start = time.perf_counter()
        run = predict_tasks(trained, [task])
        phases["total (predict_tasks)"].append(time.perf_counter() - start)
        phases["head"].append(phases["total (predict_tasks)"][-1] - phases["decode"][-1] - phases["features"][-1])
    assert len(run.predictions) == 75
    return {name: round(1000 * statistics.median(values), 2) for name, values in phases.items()} | {
        "unit": "ms", "queries": 75, "support": 25}


def time_embed(name: str, channels: int, size: int, n_images: int, folder: Path, device: torch.device,
               repeats: int) -> dict:
    rng = np.random.default_rng(0)
    if channels == 1:
        pixels = mela.open_dataset("glyphs").split("test").images[:n_images]
    else:
        pixels = rng.integers(0, 256, (n_images, size, size, channels), dtype=np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(folder / f"{name}_{i}.png")
        Image.fromarray(image[..., 0] if channels == 1 else image).save(paths[-1])
    model = model_with(name, channels, size, device)
    trained = load_trained_model(model, device)
    from_files, in_memory = [], []
    features_of(trained, decode(trained, paths[:64]).pixels)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        features_of(trained, decode(trained, paths).pixels)
        from_files.append(time.perf_counter() - start)
        start = time.perf_counter()
        extract_features(model, pixels, trained.preprocessing.mean, trained.preprocessing.std, device)
        in_memory.append(time.perf_counter() - start)
    files_rate = n_images / statistics.median(from_files)
    memory_rate = n_images / statistics.median(in_memory)
    return {"model": name, "image_size": size, "channels": channels, "images": n_images,
            "embed_from_files_images_per_s": round(files_rate, 1),
            "loader_in_memory_images_per_s": round(memory_rate, 1),
            "ratio_files_to_loader": round(files_rate / memory_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        task = time_task(Path(tmp) / "task", device, args.repeats)
        embed = [time_embed("convnet4", 1, 32, 2000, Path(tmp), device, args.repeats),
                 time_embed("resnet12", 3, 84, 300, Path(tmp), device, max(1, args.repeats // 2))]
    result = {"device": str(device), "processor": processor(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "mela": mela.__version__, "repeats": args.repeats,
              "one_task_ms": task, "embed": embed}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "inference.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(path)


if __name__ == "__main__":
    main()
