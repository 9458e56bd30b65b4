"""Steps on the reference's multi-source formats: h_aircraft's multi-head oracle and mixed's per-source evaluation."""

from __future__ import annotations

import json
import pickle

import numpy as np

from mela.config import compose_config
from mela.engine.checkpoint import load_checkpoint
from mela.steps import meta_eval, sup_baseline
from mela.workspace import data_dir, saves_dir


def run_step(module, cfg):
    return module.run(module.read_settings(cfg))

SOURCES = {"aircraft": "aircraft/aircraft_{}.pkl", "cu_birds": "cu_birds/cub_{}.pkl",
           "vgg_flower": "vgg_flower/vgg_{}.pkl"}


def write_source(root, source, n_classes, per_class=6, seed=0, hierarchy=False):
    """Pickles in the reference's layout: dict with data (N, 16, 16, 3) uint8 and labels; classes offset by split."""
    rng = np.random.default_rng(seed)
    start = 0
    for split, n in zip(("train", "val", "test"), n_classes, strict=True):
        labels = np.repeat(np.arange(start, start + n), per_class)
        start += n
        blob = {"data": rng.integers(0, 256, (len(labels), 16, 16, 3), dtype=np.uint8), "labels": labels}
        if hierarchy:
            blob["family_labels"] = labels // 2
            blob["manufacturer_labels"] = labels // 4
        path = data_dir(root) / SOURCES[source].format(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(blob, protocol=2))


def test_h_aircraft_oracle_trains_one_head_per_granularity(workspace):
    write_source(workspace, "aircraft", (12, 8, 8), hierarchy=True)
    cfg = compose_config("sup_baseline", ["dataset=h_aircraft", "model=convnet4", "epochs=1", "batch_size=16",
                                          "rotate_aug=false", "test_db_size=5", "n_queries=2", "run_name=h",
                                          "progress=false", "val_shots=[1]", "val_n_shots=1", "val_n_ways=2"])
    result = run_step(sup_baseline, cfg)
    assert result["n_classes"] == [12, 6, 3]  # variant, family (variant // 2), manufacturer (variant // 4)
    state = load_checkpoint(saves_dir(workspace) / "sup_baseline" / "h" / "last.pt")["trainable"]
    assert [state[f"heads.{i}.weight"].shape[0] for i in range(3)] == [12, 6, 3]


def test_meta_eval_on_mixed_reports_each_source_and_never_mixes_them(workspace):
    for i, source in enumerate(SOURCES):
        write_source(workspace, source, (6, 5, 5), seed=i)
    run_step(sup_baseline, compose_config("sup_baseline", [
        "dataset=mixed", "model=convnet4", "epochs=1", "batch_size=16", "rotate_aug=false", "test_db_size=5",
        "n_queries=1", "run_name=m", "progress=false", "val_shots=[1]", "val_n_shots=1"]))
    result = run_step(meta_eval, compose_config("meta_eval", ["dataset=mixed", "model=convnet4", "test_db_size=30",
                                                        "n_queries=1", "pretrained_model=m", "run_name=e",
                                                        "progress=false"]))
    saved = json.loads((saves_dir(workspace) / "meta_eval" / "e" / "results.json").read_text())
    for row in saved["rows"]:
        assert set(row["per_group"]) == {"aircraft", "cu_birds", "vgg_flower"}
        per_group = [row["per_group"][g]["acc"] for g in SOURCES]
        assert abs(np.mean(per_group) - row["acc"]) < 1e-9  # equal task counts per source
    assert [r["shots"] for r in result["rows"]] == [1, 5]
