"""``mela pipeline``: every step on one data set, then the comparison table.

Each step runs with its own config (composed from its yaml), the pipeline's
shared settings and its per-step section; runs are named after the pipeline run,
so rerunning with the same ``run_name`` resumes and skips finished steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mela.config import apply, compose_config
from mela.errors import MelaError
from mela.models.registry import check_model_name
from mela.steps import common, fine_tune, learn_labeler, learn_meta_repr, meta_eval, sup_baseline
from mela.workspace import saves_dir, workspace_root

TRAINING_STEPS = {
    "learn_meta_repr": learn_meta_repr.run,
    "learn_labeler": learn_labeler.run,
    "fine_tune": fine_tune.run,
    "sup_baseline": sup_baseline.run,
}
# Which trained model each results row evaluates.
EVALUATED = (("meta_repr", "learn_meta_repr"), ("mela", "learn_labeler"), ("mela_finetune", "fine_tune"),
             ("oracle", "sup_baseline"))
SHARED = ("workspace", "device", "seed", "progress", "dataset", "n_ways", "n_shots", "n_queries", "hflip",
          "custom_path", "custom_split", "image_size")


def step_config(cfg: DictConfig, step: str, run_name: str, extra: dict | None = None) -> DictConfig:
    """The step's own config, overlaid with the pipeline's shared keys and its section."""
    base = compose_config(step)
    shared = {k: cfg[k] for k in SHARED if k in base}
    if "val_n_ways" in base:
        shared["val_n_ways"] = cfg.n_ways
    if step == "learn_labeler":
        shared.update(label_recovery_model=cfg.model, train_model=cfg.model)
    elif "model" in base:
        shared["model"] = cfg.model
    if step == "meta_eval":
        shared["test_db_size"] = cfg.test_db_size
    else:
        shared["test_db_size"] = cfg.val_db_size
    section = cfg.get(step)
    section = {} if section is None else OmegaConf.to_container(section, resolve=True)
    return apply(base, {**shared, **section, "run_name": run_name, **(extra or {})}, step)


def _finished(root: Path, step: str, run_name: str) -> dict | None:
    done = saves_dir(root) / step / run_name / common.DONE_FILE
    return json.loads(done.read_text()) if done.exists() else None


def results_table(rows: list[dict]) -> str:
    """A plain-text table: one line per model, one column per shot count."""
    shots = sorted({r["shots"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    header = f"{'model':<15}" + "".join(f"{f'{k}-shot acc (95% CI)':>24}" for k in shots)
    lines = [header, "-" * len(header)]
    for m in models:
        cells = {r["shots"]: f"{r['acc']:.2f} ± {r['ci']:.2f}" for r in rows if r["model"] == m}
        lines.append(f"{m:<15}" + "".join(f"{cells.get(k, '-'):>24}" for k in shots))
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    """Run (or resume) the pipeline and write ``results.json``; returns its content."""
    check_model_name(str(cfg.model))
    started = time.time()
    root = workspace_root(cfg.get("workspace"))
    run_name = cfg.run_name or f"{cfg.dataset}_{cfg.model}_{time.strftime('%Y%m%d-%H%M%S')}"
    pipeline_dir = saves_dir(root) / "pipeline" / run_name
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, pipeline_dir / "config.yaml", resolve=True)
    # Compose every step's config first, so a typo fails before any training.
    refs = {"learn_labeler": {"pretrained_labeler": str(saves_dir(root) / "learn_meta_repr" / run_name)},
            "fine_tune": {"pretrained_model": str(saves_dir(root) / "learn_labeler" / run_name)}}
    configs = {step: step_config(cfg, step, run_name, refs.get(step)) for step in TRAINING_STEPS}
    step_config(cfg, "meta_eval", run_name)  # a bad meta_eval section fails now, not after training
    outcomes: dict[str, dict] = {}
    for step, step_run in TRAINING_STEPS.items():
        done = _finished(root, step, run_name)
        if done is not None:
            print(f"[pipeline] {step}: already finished in {done['run_dir']}, reusing it")
            outcomes[step] = done
            continue
        print(f"[pipeline] {step} ...")
        outcomes[step] = step_run(configs[step])
    rows = []
    for label, step in EVALUATED:
        eval_name = f"{run_name}_{label}"
        done = _finished(root, "meta_eval", eval_name)
        if done is None:
            eval_cfg = step_config(cfg, "meta_eval", eval_name,
                                   {"pretrained_model": str(saves_dir(root) / step / run_name), "model": cfg.model})
            done = meta_eval.run(eval_cfg)
        rows += [{"model": label, "shots": r["shots"], "acc": r["acc"], "ci": r["ci"]} for r in done["rows"]]
    labeler = outcomes["learn_labeler"].get("labeler")
    if labeler is None:
        raise MelaError(f"the learn_labeler run of {run_name} has no labeler summary; delete it and rerun")
    results = {"dataset": str(cfg.dataset), "model": str(cfg.model), "run_name": run_name, "rows": rows,
               "labeler": labeler, "seconds": round(time.time() - started, 1)}
    path = pipeline_dir / "results.json"
    tmp = pipeline_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
    print()
    print(results_table(rows))
    print(f"labeler: {labeler['clusters']} clusters for {labeler['true_classes']} true classes, clustering accuracy "
          f"{labeler['clustering_accuracy']:.3f}, {labeler['tasks_kept']}/{labeler['tasks_total']} tasks kept")
    print(f"pipeline time: {results['seconds']:.0f} s")
    print(path)
    results["path"] = str(path)
    return results
