"""The run store: one folder per run under ``$WORKSPACE/checkpoint/label_learn/saves/<step>/<run_name>/``.

A run folder holds the resolved ``config.yaml``, ``log.txt``, the training state
(``last.pt``, written by the engine), the published ``model.pt`` and, once the
run finished, ``done.json``: what ``latest`` and a rerun look for. Rerunning with
the same ``run_name`` reopens the folder, and the engine resumes from ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mela.device import pick_device
from mela.errors import MelaError
from mela.workspace import init_workspace, saves_dir, workspace_root

STEPS = ("learn_meta_repr", "learn_labeler", "fine_tune", "meta_eval", "sup_baseline")
MODEL_FILE = "model.pt"
DONE_FILE = "done.json"
NO_MODEL = (None, False, "", "false", "False", "null", "none")


@dataclass(frozen=True)
class RunSettings:
    """Where a run lives and what it runs on (not what it computes).

    Attributes:
        workspace: the workspace folder; None reads ``$WORKSPACE``.
        run_name: the run's folder name; None makes ``<dataset>_<model>_trial<trial>_<timestamp>``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        seed: seeds torch's global generator at the start (every sampler has its own seeded generator).
        trial: the reference's trial tag, part of the default run name.
    """

    workspace: str | None = None
    run_name: str | None = None
    device: str = "auto"
    seed: int = 0
    trial: str = "0"


class RunStore:
    """The runs of one workspace: find a finished run, a model reference, or ``latest``."""

    def __init__(self, workspace: str | os.PathLike | None = None) -> None:
        self.root = workspace_root(workspace)

    @property
    def saves(self) -> Path:
        return saves_dir(self.root)

    def run_dir(self, step: str, run_name: str) -> Path:
        return self.saves / step / run_name

    def finished(self, step: str, run_name: str) -> dict | None:
        """The ``done.json`` record of a finished run, or None."""
        done = self.run_dir(step, run_name) / DONE_FILE
        return json.loads(done.read_text()) if done.exists() else None

    def latest(self, producers: tuple[str, ...], dataset: str | None) -> Path:
        """The newest finished run of one of ``producers`` on ``dataset`` (any data set when None)."""
        candidates = []
        for step in producers:
            for done in (self.saves / step).glob(f"*/{DONE_FILE}"):
                info = json.loads(done.read_text())
                if dataset is None or info.get("dataset") == dataset:
                    candidates.append((info.get("finished", ""), done.stat().st_mtime, done.parent))
        if not candidates:
            raise MelaError(f"no finished {' or '.join(producers)} run on dataset {dataset} in {self.saves}; "
                            "run that step first, or give the model as a run name or path")
        return max(candidates)[2]

    def find_model(self, ref: object, producers: tuple[str, ...], dataset: str | None) -> Path | None:
        """Resolve a model reference to a model file.

        ``false``/``null`` -> None; ``latest`` -> the newest finished run of one of
        ``producers`` on ``dataset``; a run name -> that run of one of ``producers``;
        a run folder -> its model.pt; a file -> itself.
        """
        if ref in NO_MODEL:
            return None
        ref = str(ref)
        if ref == "latest":
            return self.latest(producers, dataset) / MODEL_FILE
        path = Path(ref).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            return _model_in(path)
        for step in producers:
            run_dir = self.run_dir(step, ref)
            if run_dir.is_dir():
                return _model_in(run_dir)
        raise MelaError(f"model '{ref}' is neither a file, a run folder, nor a run of {', '.join(producers)} "
                        f"under {self.saves}; use latest, a run name or a path")


def _model_in(run_dir: Path) -> Path:
    model = run_dir / MODEL_FILE
    if not model.exists():
        raise MelaError(f"{run_dir} has no {MODEL_FILE}: the run did not finish; rerun it with run_name={run_dir.name}")
    return model


def _make_logger(step: str, run_dir: Path) -> logging.Logger:
    """A logger private to this run (not registered globally): the run's log.txt plus the console."""
    logger = logging.Logger(f"mela.{step}", logging.INFO)
    file_handler = logging.FileHandler(run_dir / "log.txt")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"[{step}] %(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return logger


@dataclass
class Run:
    """One step's run: its folder, its device, its log."""

    step: str
    dataset: str
    run_dir: Path
    device: torch.device
    logger: logging.Logger

    def log(self, message: str) -> None:
        self.logger.info(message)

    def publish_model(self, chosen: Path) -> Path:
        """Copy the chosen checkpoint to the run's ``model.pt`` (atomically), the file later steps load."""
        tmp = self.run_dir / f".{MODEL_FILE}.tmp"
        shutil.copyfile(chosen, tmp)
        os.replace(tmp, self.run_dir / MODEL_FILE)
        return self.run_dir / MODEL_FILE

    def finish(self, metrics: Mapping) -> dict:
        """Mark the run complete (``done.json``: what later steps and ``latest`` look for) and close its log."""
        record = {"step": self.step, "dataset": self.dataset, "run_dir": str(self.run_dir),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
        tmp = self.run_dir / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, self.run_dir / DONE_FILE)
        self.close()
        return record

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def default_run_name(dataset: str, model_name: str, trial: str) -> str:
    return f"{dataset}_{model_name}_trial{trial}_{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(settings: RunSettings, step: str, dataset: str, model_name: str, config: Mapping,
              resumable: bool = True) -> Run:
    """Create the run folder (or reopen it to resume), save the resolved ``config``, open the log."""
    store = RunStore(settings.workspace)
    init_workspace(store.root)
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    run_name = settings.run_name or default_run_name(dataset, model_name, settings.trial)
    run_dir = store.run_dir(step, str(run_name))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(dict(config)), run_dir / "config.yaml")
    run = Run(step, dataset, run_dir, device, _make_logger(step, run_dir))
    hint = f" (if interrupted, rerun with run_name={run_name} to resume)" if resumable else ""
    run.log(f"run folder {run_dir} on {device}{hint}")
    return run
