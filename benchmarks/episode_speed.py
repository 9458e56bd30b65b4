"""Time per 5-way episode with the ridge head: meta-test (forward + head) and meta-train (+ backward).

MetaOptNet reports 68 / 75 ms per ridge-head episode (1-shot / 5-shot) on ResNet-12 at
meta-test time on a GPU; this measures ours on whatever device is here and writes
benchmarks/results/episode_speed_<device>.json.

    python benchmarks/episode_speed.py [--model resnet12] [--size 84] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mela.device import pick_device
from mela.methods.heads import RidgeHead
from mela.methods.ridge import task_ridge_loss
from mela.models.feature_model import FeatureModel, ModelSpec

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_episodes(model, device, shots: int, size: int, repeats: int, train: bool) -> float:
    n_ways, n_queries = 5, 15
    x = torch.randn(n_ways * (shots + n_queries), 3, size, size, device=device)
    labels_s = torch.arange(n_ways, device=device).repeat_interleave(shots)
    labels_q = torch.arange(n_ways, device=device).repeat_interleave(n_queries)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for i in range(repeats + 3):
        sync(device)
        start = time.perf_counter()
        if train:
            model.train()
            f = model(x)
            loss = task_ridge_loss(f[None, : n_ways * shots], labels_s[None], f[None, n_ways * shots:],
                                   labels_q[None], n_ways, 1e-3, True)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            model.eval()
            with torch.no_grad():
                f = model(x)
                RidgeHead().fit(f[None, : n_ways * shots], labels_s[None], n_ways).predict(f[None, n_ways * shots:])
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet12")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = pick_device("auto")
    model = FeatureModel(ModelSpec(args.model, {"in_channels": 3})).to(device)
    rows = []
    for shots in (1, 5):
        for train in (False, True):
            ms = time_episodes(model, device, shots, args.size, args.repeats, train)
            rows.append({"shots": shots, "phase": "meta-train" if train else "meta-test", "median_ms": round(ms, 2)})
            print(json.dumps(rows[-1]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"episode_speed_{device.type}.json"
    out.write_text(json.dumps({"device": name, "model": args.model, "size": args.size, "rows": rows,
                               "reference": "MetaOptNet ridge head, ResNet-12, meta-test: 68 ms (1-shot), "
                                            "75 ms (5-shot) per episode"}, indent=1))
    print(out)


if __name__ == "__main__":
    main()
