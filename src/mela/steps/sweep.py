"""``mela <step> -m key=a,b ...``: a multirun, each job in its own run folder, then the aggregate.

The jobs run one after another (under torchrun every rank runs every job). The sweep's name comes from the
command (``run_name=NAME`` gives it; otherwise ``<config>-<swept keys>-<hash of the overrides>``), job i runs
as ``<sweep>_<i>``, so rerunning the same command finds the same runs: finished ones are reused and an
interrupted one resumes from its last epoch. The sweep folder ``saves/sweeps/<name>/`` holds ``sweep.json``
(the jobs, their overrides, run folders, status and wall time, and the aggregate) and ``sweep.md``.

Every job's settings and data are checked before the first job starts: a key that does not exist, a value
that does not parse or a combination the data cannot feed is one line, before any work.
"""

from __future__ import annotations

import hashlib
import importlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mela import distributed
from mela.errors import MelaError
from mela.experiments.aggregate import SWEEP_JSON, write_aggregate
from mela.experiments.overrides import SweepJob, SweepSpec, parse_sweep
from mela.jsonio import read_json, write_json_atomic
from mela.runs.store import RunStore, check_run_name

SWEEPS = "sweeps"
DEFAULT_MAX_JOBS = 100


@dataclass(frozen=True)
class SweepPlan:
    """A checked multirun: the step and config it runs, its name, folder and jobs (each with its run name)."""

    step: str
    config_name: str
    name: str
    spec: SweepSpec
    jobs: tuple[SweepJob, ...]
    run_names: tuple[str, ...]
    workspace: str | None
    command: str

    def sweep_dir(self) -> Path:
        return RunStore(self.workspace).saves / SWEEPS / self.name

    def run_dir(self, index: int) -> Path:
        saves = RunStore(self.workspace).saves
        return saves / self.step / self.run_names[index]


def sweep_name(config_name: str, spec: SweepSpec) -> str:
    """The sweep's name: ``run_name`` when given, else ``<config>-<swept keys>-<8 hex of the overrides>``."""
    given = [o.split("=", 1)[1] for o in spec.fixed if o.split("=", 1)[0].lstrip("+") == "run_name"]
    if given:
        return check_run_name(given[-1])
    text = repr((config_name, spec.fixed, spec.keys, spec.values))
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    leaves = "-".join(k.lstrip("+~").split(".")[-1] for k in spec.keys) or "single"
    return check_run_name(f"{config_name}-{leaves}-{digest}")


def plan_sweep(step: str, config_name: str, overrides: list[str], max_jobs: int = DEFAULT_MAX_JOBS,
               yes: bool = False) -> SweepPlan:
    """Parse the multirun and name its jobs; too many jobs without ``yes`` is refused here."""
    spec = parse_sweep(overrides)
    command = f"mela {step.replace('_', '-')} -m " + " ".join(shlex.quote(o) for o in overrides)
    if config_name != step:
        command += f" --config-name {config_name}"
    if spec.n_jobs > max_jobs and not yes:
        raise MelaError(f"this sweep has {spec.n_jobs} jobs, more than {max_jobs}: add --yes to run them all "
                        "(or --max-jobs N), or sweep fewer values")
    name = sweep_name(config_name, spec)
    jobs = tuple(spec.jobs())
    run_names = tuple(f"{name}_{job.index}" for job in jobs)
    fixed = [o for o in spec.fixed if o.split("=", 1)[0].lstrip("+") == "run_name"]
    jobs = tuple(SweepJob(j.index, (*[o for o in j.overrides if o not in fixed], f"run_name={run_names[j.index]}"),
                          j.swept) for j in jobs)
    workspace = next((o.split("=", 1)[1] for o in spec.fixed if o.split("=", 1)[0] == "workspace"), None)
    return SweepPlan(step, config_name, name, spec, jobs, run_names, workspace, command)


@dataclass
class ReadyJob:
    """A job whose settings are read and whose data is open and checked: it only has to run."""

    job: SweepJob
    settings: object
    data: object
    other: object


def check_swept_keys(plan: SweepPlan) -> None:
    """A swept key must be a setting of the config (of the step's section, for ``<step>.key`` in a pipeline)."""
    from omegaconf import OmegaConf

    from mela.config.compose import STEP_SECTIONS, default_config

    defaults = default_config(plan.config_name)
    for raw in plan.spec.keys:
        if raw.startswith("+"):
            continue  # an added key: Hydra's own syntax says it is new
        key = raw.lstrip("~")
        section, _, leaf = key.partition(".")
        if plan.config_name.startswith("pipeline") and section in STEP_SECTIONS and leaf:
            where, known = f"mela {section.replace('_', '-')}", default_config(section)
            found = OmegaConf.select(known, leaf, default=_MISSING) is not _MISSING
        else:
            where = f"mela {plan.step.replace('_', '-')}"
            found = OmegaConf.select(defaults, key, default=_MISSING) is not _MISSING
        if not found:
            raise MelaError(f"swept key '{key}' is not a setting of {where} (see `{where} --help`)")


_MISSING = object()


def prepare_jobs(plan: SweepPlan) -> list[ReadyJob]:
    """Compose, read and check every job (its data opened once per data set) before any of them runs."""
    from mela.config import compose_config
    from mela.data.registry import open_dataset
    from mela.workspace import data_dir

    check_swept_keys(plan)
    module = importlib.import_module(f"mela.steps.{plan.step}")
    opened: dict[tuple, object] = {}
    ready = []
    for job in plan.jobs:
        where = ", ".join(f"{k}={v}" for k, v in job.swept.items()) or "the only job"
        try:
            cfg = compose_config(plan.config_name, list(job.overrides))
            settings = module.read_settings(cfg)
            store = RunStore(settings.run.workspace)
            key = (str(store.root), settings.dataset)
            if key not in opened:
                opened[key] = open_dataset(settings.dataset, data_dir(store.root))
            data = opened[key]
            other = None
            if plan.step in ("pipeline", "meta_eval"):
                from mela.steps import meta_eval

                evaluation = settings.evaluation if plan.step == "pipeline" else settings
                if evaluation.eval_dataset is not None:
                    other_key = (str(store.root), evaluation.eval_dataset)
                    if other_key not in opened:
                        opened[other_key] = meta_eval.open_eval_dataset(evaluation, store)
                    other = opened[other_key]
                module.check_data(settings, data, other)
            else:
                module.check_data(settings, data)
        except MelaError as exc:
            raise MelaError(f"sweep job {job.index} ({where}): {exc}") from exc
        ready.append(ReadyJob(job, settings, data, other))
    return ready


def job_finished(plan: SweepPlan, index: int) -> bool:
    """Whether job ``index`` already finished: a pipeline's results.json, a step's done.json."""
    run_dir = plan.run_dir(index)
    return (run_dir / ("results.json" if plan.step == "pipeline" else "done.json")).is_file()


def _read_previous(path: Path) -> dict:
    try:
        return read_json(path) if path.is_file() else {}
    except MelaError:
        return {}


def run_sweep(plan: SweepPlan, say: Callable[[str], None] = print) -> dict:
    """Run (or resume) every job, then write ``sweep.json`` and ``sweep.md`` with the aggregate; returns the
    sweep record plus its ``path``."""
    from mela.runlock import RunLock

    ready = prepare_jobs(plan)  # every job checked before the first one runs
    sweep_dir = plan.sweep_dir()
    main = distributed.is_main()
    lock = RunLock(sweep_dir)
    if main:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        previous = {j.get("index"): j for j in _read_previous(sweep_dir / SWEEP_JSON).get("jobs", [])}
        record = {"name": plan.name, "command": plan.command, "step": plan.step, "config_name": plan.config_name,
                  "swept": [k.lstrip("+~") for k in plan.spec.keys], "fixed": list(plan.spec.fixed),
                  "jobs": [{"index": r.job.index, "swept": r.job.swept, "overrides": list(r.job.overrides),
                            "run_name": plan.run_names[r.job.index], "run_dir": str(plan.run_dir(r.job.index)),
                            "status": "pending",
                            "seconds": previous.get(r.job.index, {}).get("seconds")} for r in ready]}
        module = importlib.import_module(f"mela.steps.{plan.step}")
        for item, entry in zip(ready, record["jobs"], strict=True):
            i = item.job.index
            values = ", ".join(f"{k}={v}" for k, v in item.job.swept.items())
            if distributed.broadcast_object(job_finished(plan, i) if main else None):
                entry["status"] = "reused"
                say(f"[sweep] job {i + 1}/{len(ready)} ({values}): already finished in {entry['run_dir']}, reusing it")
                continue
            say(f"[sweep] job {i + 1}/{len(ready)} ({values}): run_name={entry['run_name']}")
            started = time.time()
            entry["status"] = "running"
            _write(sweep_dir, record, main)
            try:
                if plan.step == "meta_eval":
                    module.run(item.settings, item.data, item.other)
                else:
                    module.run(item.settings, item.data)
            except BaseException:
                entry["status"] = "failed"
                entry["seconds"] = round(time.time() - started, 1)
                _write(sweep_dir, record, main)
                raise
            entry["status"] = "finished"
            entry["seconds"] = round(time.time() - started, 1)
            _write(sweep_dir, record, main)
        seconds = [e["seconds"] for e in record["jobs"] if e.get("seconds") is not None]
        record["seconds"] = round(sum(seconds), 1) if seconds else None
        if not main:
            return {**record, "path": str(sweep_dir / SWEEP_JSON)}
        paths = write_aggregate(sweep_dir, record, [plan.run_dir(i) for i in range(len(plan.jobs))], say)
        for path in paths:
            say(str(path))
        say(str(sweep_dir / SWEEP_JSON))  # last: scripts read the sweep.json path from here
        return {**record, "path": str(sweep_dir / SWEEP_JSON)}
    finally:
        if main and lock.held:
            lock.release()


def _write(sweep_dir: Path, record: dict, main: bool) -> None:
    if main:
        write_json_atomic(sweep_dir / SWEEP_JSON, record)


def multirun_args(args: list[str]) -> tuple[bool, int, bool, list[str]]:
    """Strip ``-m`` / ``--multirun``, ``--yes`` and ``--max-jobs N`` from a step's arguments: (multirun, max jobs,
    yes, the rest)."""
    multirun = "-m" in args or "--multirun" in args
    yes = "--yes" in args
    max_jobs = DEFAULT_MAX_JOBS
    rest = [a for a in args if a not in ("-m", "--multirun", "--yes")]
    if "--max-jobs" in rest:
        i = rest.index("--max-jobs")
        try:
            max_jobs = int(rest[i + 1])
        except (IndexError, ValueError) as exc:
            raise MelaError("--max-jobs needs a number, e.g. --max-jobs 200") from exc
        rest = rest[:i] + rest[i + 2:]
    return multirun, max_jobs, yes, rest
