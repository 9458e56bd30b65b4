"""The run store: one folder per run under ``$WORKSPACE/checkpoint/label_learn/saves/<step>/<run_name>/``.

A run folder holds the resolved ``config.yaml``, ``log.txt``, the training state
(``last.pt``, written by the engine), the published ``model.pt`` and, once the
run finished, ``done.json``: what ``latest`` and a rerun look for. Rerunning with
the same ``run_name`` reopens the folder, and the engine resumes from ``last.pt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mela import distributed
from mela.data.registry import Dataset
from mela.data.task_dataset import TaskDataset
from mela.device import pick_device
from mela.engine.checkpoint import EXPORT_JSON
from mela.engine.precision import ComputeSettings
from mela.errors import MelaError
from mela.jsonio import json_safe, read_json, write_json_atomic
from mela.runlock import RunLock
from mela.workspace import init_workspace, saves_dir, workspace_root

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
        free_keys: config keys a rerun may change, since they do not define the result (the settings registry's,
            :func:`mela.config.settings.free_keys`); every other key of the saved config must match to resume.
    """

    workspace: str | None = None
    run_name: str | None = None
    device: str = "auto"
    seed: int = 0
    trial: str = "0"
    free_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.run_name is not None:
            check_run_name(str(self.run_name))


def check_run_name(name: str) -> str:
    """A run name is a folder name inside the step's folder, never a path."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise MelaError(f"run_name={name!r} must be a plain name (no '/', not starting with '.'); "
                        "runs always live in $WORKSPACE/checkpoint/label_learn/saves/<step>/<run_name>")
    return name


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
        return read_json(done) if done.exists() else None

    def latest(self, producers: tuple[str, ...], dataset: str | None, model: str | None = None) -> Path:
        """The newest finished run of one of ``producers`` on ``dataset`` with architecture ``model``.

        ``dataset`` is a data set identity (the name; for ``custom`` also its path and content hash);
        None matches any data set, and ``model`` None any architecture.
        """
        candidates = []
        for step in producers:
            for done in (self.saves / step).glob(f"*/{DONE_FILE}"):
                info = read_json(done)
                if dataset is not None and info.get("dataset_id", info.get("dataset")) != dataset:
                    continue
                if model is not None and info.get("backbone", model) != model:
                    continue
                candidates.append((info.get("finished", ""), done.stat().st_mtime, done.parent))
        if not candidates:
            what = f"dataset {dataset}" + (f" with model {model}" if model else "")
            raise MelaError(f"no finished {' or '.join(producers)} run on {what} in {self.saves}; "
                            "run that step first, or give the model as a run name or path")
        return max(candidates)[2]

    def find_model(self, ref: object, producers: tuple[str, ...], dataset: str | None,
                   model: str | None = None) -> Path | None:
        """Resolve a model reference to a model file.

        ``false``/``null`` -> None; ``latest`` -> the newest finished run of one of
        ``producers`` on ``dataset`` with architecture ``model``; a run name -> that run of
        one of ``producers``; a run folder -> its model.pt; a file -> itself.
        """
        if ref in NO_MODEL:
            return None
        ref = str(ref)
        if ref == "latest":
            return self.latest(producers, dataset, model) / MODEL_FILE
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
    if (run_dir / EXPORT_JSON).is_file():  # a folder written by `mela export`: loaded as a whole
        return run_dir
    model = run_dir / MODEL_FILE
    if not model.exists():
        raise MelaError(f"{run_dir} has no {MODEL_FILE}: the run did not finish; rerun it with run_name={run_dir.name}")
    return model


def _make_logger(step: str, run_dir: Path) -> logging.Logger:
    """A logger private to this run (not registered globally): the run's log.txt plus the console; on the
    other ranks under torchrun, nothing (rank 0 speaks for the run)."""
    logger = logging.Logger(f"mela.{step}", logging.INFO)
    if not distributed.is_main():
        logger.addHandler(logging.NullHandler())
        return logger
    file_handler = logging.FileHandler(run_dir / "log.txt")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"[{step}] %(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return logger


@dataclass
class Run:
    """One step's run: its folder (locked while it runs), its device, its log.

    Use it as a context manager: the lock is released and the log closed however the run ends,
    and a folder this run created is removed again if it failed before writing any checkpoint.
    """

    step: str
    dataset: str
    dataset_id: str
    backbone: str
    run_dir: Path
    device: torch.device
    logger: logging.Logger
    lock: RunLock
    created: bool = False

    def log(self, message: str) -> None:
        self.logger.info(message)

    def publish_model(self, chosen: Path) -> Path:
        """Copy the chosen checkpoint to the run's ``model.pt`` (atomically), the file later steps load."""
        if not distributed.is_main():
            return self.run_dir / MODEL_FILE
        tmp = self.run_dir / f".{MODEL_FILE}.tmp"
        try:
            shutil.copyfile(chosen, tmp)
            os.replace(tmp, self.run_dir / MODEL_FILE)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise MelaError(f"cannot write {self.run_dir / MODEL_FILE}: {exc.strerror or exc}; free some disk space "
                            "or fix the folder's permissions, then rerun with the same run_name") from exc
        return self.run_dir / MODEL_FILE

    def write_json(self, name: str, content: object) -> Path:
        """A JSON file in the run folder, written atomically, NaN and inf as null."""
        if not distributed.is_main():
            return self.run_dir / name
        write_json_atomic(self.run_dir / name, content)
        return self.run_dir / name

    def finish(self, metrics: Mapping) -> dict:
        """Mark the run complete (``done.json``: what later steps and ``latest`` look for) and close it."""
        record = {"step": self.step, "dataset": self.dataset, "dataset_id": self.dataset_id,
                  "backbone": self.backbone, "run_dir": str(self.run_dir),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
        self.write_json(DONE_FILE, record)
        self.close()
        distributed.barrier()  # every rank returns once done.json is written
        return json_safe(record)

    def close(self, failed: bool = False) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
        if self.lock.held:
            self.lock.release()
        if failed and self.created and distributed.is_main() and not any(self.run_dir.glob("*.pt")):
            shutil.rmtree(self.run_dir, ignore_errors=True)  # rejected before it trained: leave nothing behind

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close(failed=exc_type is not None)


def default_run_name(dataset: str, model_name: str, trial: str) -> str:
    return f"{dataset}_{model_name}_trial{trial}_{time.strftime('%Y%m%d-%H%M%S')}"


# Keys the store itself adds to a run's config.yaml: how it ran, not what it computes.
RECORDED_KEYS = frozenset({"world_size"})


def differing_settings(saved: Mapping, new: Mapping, free: Collection[str] = ()) -> list[str]:
    """Keys whose values define the result and differ between a run's saved config and a new one.

    ``free``: keys that do not define the result (a rerun may change them; the step's ``RunSettings.free_keys``).
    ``epochs`` may grow (training longer resumes from the last epoch); it may not shrink.
    """
    keys = sorted((set(saved) | set(new)) - RECORDED_KEYS - set(free))
    out = []
    for key in keys:
        old, now = saved.get(key), new.get(key)
        if key == "epochs" and isinstance(old, int) and isinstance(now, int) and now >= old:
            continue
        if old != now:
            out.append(f"{key}: {old!r} -> {now!r}")
    return out


def check_reuse(run_dir: Path, config: Mapping, free: Collection[str] = ()) -> None:
    """Refuse to reopen ``run_dir`` with settings that would change what its files hold (``free``: keys that
    do not define the result)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
    differ = differing_settings(saved, dict(config), free)
    if differ:
        raise MelaError(f"run {run_dir.name} was started with other settings ({'; '.join(differ)}); rerun with its "
                        "own settings to resume it, or pick a new run_name")


def _open_run_folder(store: RunStore, run_dir: Path, lock: RunLock, step: str, config: Mapping,
                     resumable: bool, free: Collection[str]) -> tuple[bool, logging.Logger]:
    """Lock the run folder (creating it, or reopening it), check and save the config, open the log (rank 0)."""
    init_workspace(store.root)
    created = not run_dir.exists()
    lock.acquire()
    try:
        check_reuse(run_dir, config, free)
        if (run_dir / DONE_FILE).exists() and not resumable:
            (run_dir / DONE_FILE).unlink()  # an evaluation reruns whole; its results are rewritten
        saved = dict(config)
        if distributed.is_distributed():
            saved["world_size"] = distributed.world_size()
        OmegaConf.save(OmegaConf.create(saved), run_dir / "config.yaml")
        return created, _make_logger(step, run_dir)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


SKIPPED_SHOWN = 20  # skipped tasks named one per line in a run's log; the rest are counted


def start_run(settings: RunSettings, step: str, dataset: Dataset | TaskDataset | str, model_name: str, config: Mapping,
              resumable: bool = True, compute: ComputeSettings | None = None) -> Run:
    """Lock the run folder (creating it, or reopening it to resume), check and save the config, open the log.

    Call it after every check of settings and data, so a rejected run leaves no folder behind. ``compute`` (the
    step's precision and memory layout) is resolved on the run's device and stated in the log's first line.
    """
    store = RunStore(settings.workspace)
    device = distributed.device_for(pick_device(settings.device))
    on = f"{device}, {compute.resolve(device, model_name).describe()}" if compute is not None else f"{device}"
    n_ranks = distributed.world_size()
    if n_ranks > 1:
        on += f", {n_ranks} processes (torchrun, DDP)"
    name, identity = (dataset, dataset) if isinstance(dataset, str) else (dataset.name, dataset.identity)
    # Rank 0 names the run (the default name holds the time) and opens its folder; the others follow it.
    run_name = distributed.broadcast_object(settings.run_name or default_run_name(name, model_name, settings.trial))
    run_dir = store.run_dir(step, str(run_name))
    lock = RunLock(run_dir)
    created = False
    if distributed.is_main():
        try:
            created, logger = _open_run_folder(store, run_dir, lock, step, config, resumable, settings.free_keys)
        except BaseException as exc:
            distributed.broadcast_object(str(exc) if isinstance(exc, MelaError) else f"rank 0 failed: {exc!r}")
            raise
        distributed.broadcast_object(None)
    else:
        problem = distributed.broadcast_object(None)
        if problem is not None:
            raise MelaError(problem)
        logger = _make_logger(step, run_dir)
    torch.manual_seed(settings.seed)
    run = Run(step, name, identity, model_name, run_dir, device, logger, lock, created)
    hint = f" (if interrupted, rerun with run_name={run_name} to resume)" if resumable else ""
    run.log(f"run folder {run_dir} on {on}{hint}")
    if isinstance(dataset, TaskDataset):
        run.log(dataset.describe())
        for note in dataset.collection.notes:
            run.log(note)
        skipped = dataset.collection.skipped
        for task in skipped[:SKIPPED_SHOWN]:
            run.log(f"skipped task '{task.task}' ({task.reason}): {task.message}")
        if len(skipped) > SKIPPED_SHOWN:
            run.log(f"... and {len(skipped) - SKIPPED_SHOWN} more skipped tasks (the counts by reason are above)")
    return run
