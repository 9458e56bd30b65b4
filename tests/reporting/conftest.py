"""Run folders as the steps and the pipeline write them (same files, same fields), built without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

SAVES = Path("checkpoint") / "label_learn" / "saves"
TRAINING = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline")
EVALUATED = {"meta_repr": "learn_meta_repr", "mela": "learn_labeler", "mela_finetune": "fine_tune",
             "oracle": "sup_baseline"}


def log_lines(step: str, run_dir: Path, start: str, seconds: int) -> str:
    """log.txt with the step's first line at ``start`` (HH:MM:SS on 2026-01-02) and its last ``seconds`` later."""
    h, m, s = (int(x) for x in start.split(":"))
    t = h * 3600 + m * 60 + s + seconds
    end = f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d}"
    return (f"2026-01-02 {start} mela.{step} | run folder {run_dir} on cpu\n"
            f"2026-01-02 {start} mela.{step} | epoch=1 lr=0.05 loss=1.5\n"
            f"2026-01-02 {end} mela.{step} | epoch=2 lr=0.005 loss=1.3\n")


def write_run(run_dir: Path, step: str, config: dict, done: dict | None, seconds: int = 5,
              history: list[dict] | None = None, **files: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / "log.txt").write_text(log_lines(step, run_dir, "10:00:00", seconds))
    if done is not None:
        record = {"step": step, "dataset": config["dataset"], "run_dir": str(run_dir),
                  "finished": f"2026-01-02T10:00:{seconds:02d}", **done}
        (run_dir / "done.json").write_text(json.dumps(record, indent=1))
    if history is not None:
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    for name, content in files.items():
        (run_dir / f"{name}.json").write_text(json.dumps(content, indent=1))
    return run_dir


HISTORY = [{"epoch": 1, "lr": 0.05, "loss": 1.51, "train_acc": 26.4},
           {"epoch": 2, "lr": 0.005, "loss": 1.36, "train_acc": 30.7, "val_1shot": 46.25, "val_5shot": 61.25}]
LABELER_REPORT = {"clusters": 11, "true_classes": 12, "clustering_accuracy": 0.875, "tasks_kept": 90,
                  "tasks_total": 100, "true_classes_found": 10, "classes_split_over_clusters": 1,
                  "clusters_mixing_classes": 2, "centroids": 11, "mode": "improved", "K_initial": 40,
                  "passes": [{"centroids_before": 40, "spawned": 0, "pruned": 28, "merged": 1, "centroids_after": 11,
                              "clustering_rate": 1.0, "prune_threshold": 1.0},
                             {"centroids_before": 11, "spawned": 0, "pruned": 0, "merged": 0, "centroids_after": 11,
                              "clustering_rate": 1.0, "prune_threshold": 5.0}]}


def write_pipeline(root: Path, name: str, accs: dict[str, tuple[float, float]], K: int = 40,
                   dataset: str = "glyphs", model: str = "convnet4") -> Path:
    """A finished pipeline ``name`` in workspace ``root``: its folder, four training runs and four evaluations.

    ``accs``: model label -> (1-shot acc, 5-shot acc); every CI is acc / 20.
    """
    saves = root / SAVES
    labeler = {k: LABELER_REPORT[k] for k in ("clusters", "true_classes", "clustering_accuracy", "tasks_kept",
                                               "tasks_total")}
    for i, step in enumerate(TRAINING):
        config = {"dataset": dataset, "model": model, "epochs": 2, "run_name": name, "seed": 0}
        files: dict = {}
        if step == "learn_labeler":
            config.update(K=K, train_model=model, pretrained_labeler=str(saves / "learn_meta_repr" / name))
            files["labeler_report"] = LABELER_REPORT
        done = {"model": str(saves / step / name / "model.pt"), "best_val": {"1shot": 48.75, "5shot": 68.5},
                **({"labeler": labeler} if step == "learn_labeler" else {})}
        write_run(saves / step / name, step, config, done, seconds=10 + i, history=HISTORY, **files)
    rows = []
    for label, (one, five) in accs.items():
        eval_rows = [{"shots": k, "acc": acc, "ci": acc / 20, "tasks": 20, "per_group": {"all": {"acc": acc,
                                                                                                 "ci": acc / 20}}}
                     for k, acc in ((1, one), (5, five))]
        run_dir = saves / "meta_eval" / f"{name}_{label}"
        model_path = str(saves / EVALUATED[label] / name / "model.pt")
        write_run(run_dir, "meta_eval", {"dataset": dataset, "model": model, "run_name": f"{name}_{label}",
                                         "pretrained_model": str(saves / EVALUATED[label] / name)},
                  {"model": model_path, "rows": eval_rows}, seconds=2,
                  results={"model": model_path, "rows": eval_rows})
        rows += [{"model": label, "shots": r["shots"], "acc": r["acc"], "ci": r["ci"]} for r in eval_rows]
    pipeline_dir = saves / "pipeline" / name
    pipeline_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"run_name": name, "dataset": dataset, "model": model, "seed": 0,
                                     "learn_labeler": {"epochs": 2, "K": K}}), pipeline_dir / "config.yaml")
    results = {"dataset": dataset, "model": model, "run_name": name, "rows": rows, "labeler": labeler,
               "seconds": 61.5}
    (pipeline_dir / "results.json").write_text(json.dumps(results, indent=1))
    return pipeline_dir


@pytest.fixture()
def two_pipelines(tmp_path) -> Path:
    """A workspace with two finished pipelines that differ in the labeler's K."""
    root = tmp_path / "ws"
    write_pipeline(root, "a", {"meta_repr": (61.5, 75.0), "mela": (62.0, 79.75), "mela_finetune": (62.25, 80.0),
                               "oracle": (63.75, 81.75)}, K=40)
    write_pipeline(root, "b", {"meta_repr": (58.125, 72.5), "mela": (66.0, 81.0), "mela_finetune": (66.5, 82.0),
                               "oracle": (70.0, 85.0)}, K=80)
    return root
