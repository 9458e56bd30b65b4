"""The ``mela`` command: a thin layer over the steps (config -> typed settings -> ``run``).

    mela learn-meta-repr dataset=miniImageNet n_shots=1
    mela pipeline                      # the glyphs demo
    mela data info glyphs --json
    mela workspace init
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import resources

from omegaconf import DictConfig, OmegaConf

from mela import distributed
from mela.device import keep_freed_memory
from mela.errors import MelaError
from mela.steps.registry import step_info, step_names, steps

STEP_COMMANDS = {**{info.command: info.name for info in steps()}, "pipeline": "pipeline"}  # command -> config

USAGE = """usage: mela <command> [key=value ...]    (mela -V, --version: versions of mela and torch, the device)

pipeline steps (Hydra overrides as key=value; --cfg prints the resolved config, --help the defaults;
-m / --multirun sweeps value lists, e.g. mela pipeline -m seed=0,1,2: a run per combination, then the
aggregate with paired differences in saves/sweeps/<name>/; --yes for more than 100 jobs):
<steps>
  pipeline          all of the above on one data set, then a results table (default: the glyphs demo;
                    --config-name pipeline_paper for the reference schedule)

other commands:
  data ...          data sets: info, check, download, unpack, converters, build-glyphs (mela data --help)
  tasks ...         locally labelled task collections: make (from a data set), info (mela tasks --help)
  workspace init    create $WORKSPACE/metaL_data and $WORKSPACE/checkpoint/label_learn/saves
  models            list the model names
  report PATH...    report.md + self-contained report.html across runs, pipelines or a workspace
                    (mela report --help)
  labels ...        the global classes of a learn_labeler run: show RUN [--class N | --task ID], doubtful RUN
                    [--out review.csv] (mela labels --help)

use a trained model (MODEL: model file, exported folder, run name, or a pipeline run's mela model):
  predict MODEL     few-shot predictions: --support DIR --query FILES_OR_DIRS, or --tasks MANIFEST.csv
  embed MODEL IMGS  features of images to --out features.npz
  export MODEL      --out DIR: model.safetensors + mela_model.json (--format onnx torchscript)
""".replace("<steps>", "\n".join(f"  {info.command:<16}  {info.description}" for info in steps()))


def step_runner(name: str) -> Callable[[DictConfig], dict]:
    """Read step ``name``'s config into its typed settings, then run it (imported lazily: keeps ``--help`` fast)."""
    import importlib

    module = step_info(name).load() if name in step_names() else importlib.import_module(f"mela.steps.{name}")
    return lambda cfg: module.run(module.read_settings(cfg))


def _settings_text(config_name: str) -> str:
    """The config's settings as users should read them: its opening comment, then every key with its default and
    its doc from the settings registry (:mod:`mela.config.settings`)."""
    from mela.config import default_config
    from mela.config.settings import settings_help

    lines = resources.files("mela.conf").joinpath(f"{config_name}.yaml").read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if line.startswith("hydra:"))]
    return "\n".join([*header, "", settings_help(config_name, default_config(config_name))])


def _run_step(name: str, args: list[str]) -> int:
    from mela.config import compose_config

    config_name = name
    if "--config-name" in args:
        i = args.index("--config-name")
        if i + 1 >= len(args):
            raise MelaError("--config-name needs a name, e.g. --config-name pipeline_paper")
        config_name = args[i + 1]
        args = args[:i] + args[i + 2:]
    if "--help" in args or "-h" in args:
        print(f"mela {name.replace('_', '-')} [key=value ...] [--cfg]; the defaults:\n")
        print(_settings_text(config_name))
        return 0
    if any(a in ("-m", "--multirun") for a in args):  # Hydra's multirun: the product of the value lists
        from mela.steps.sweep import multirun_args, plan_sweep, run_sweep

        _, max_jobs, yes, sweep_args = multirun_args(args)
        if "--cfg" in sweep_args:
            raise MelaError("--cfg shows one config: drop -m, or give one value per key")
        run_sweep(plan_sweep(name, config_name, sweep_args, max_jobs, yes))
        return 0
    show_only = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise MelaError(f"'{bad[0]}' is not a key=value setting; e.g. mela {name.replace('_', '-')} n_shots=1")
    cfg = compose_config(config_name, overrides)
    if show_only:
        print(OmegaConf.to_yaml(cfg))
        return 0
    step_runner(name)(cfg)
    return 0


def version_line() -> str:
    """``mela --version``: mela's version, torch's, and the device ``device=auto`` picks."""
    import torch

    from mela._version import __version__
    from mela.device import pick_device

    device = pick_device("auto")
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    return f"mela {__version__} (torch {torch.__version__}, device: {where})"


def _workspace(args: list[str]) -> int:
    from mela.workspace import init_workspace, workspace_root

    if not args or args[0] != "init":
        raise MelaError("usage: mela workspace init [DIR]  (DIR defaults to $WORKSPACE)")
    root = workspace_root(args[1] if len(args) > 1 else None)
    for path in init_workspace(root):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mela`` console command; errors print one line and exit 2.

    Under torchrun (its RANK / WORLD_SIZE / MASTER_ADDR environment) the process joins the process group first
    and leaves it at the end; an error line then names the rank it happened on.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # a real process, not a test calling main(): tune it once
        keep_freed_memory()
    if not distributed.launched_by_torchrun() or distributed.is_distributed():  # (already joined: the caller's)
        return _main(args)
    try:
        device = next((a.split("=", 1)[1] for a in args if a.startswith(("device=", "+device="))), "auto")
        distributed.init_from_env(device)
    except MelaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed.stop_quietly_when_told()
    quiet = None
    if not distributed.is_main():  # rank 0 prints for the run (tables, paths); errors still reach stderr
        quiet = open(os.devnull, "w")  # noqa: SIM115 - closed in the finally below
        sys.stdout = quiet
    try:
        return _main(args)
    except Exception as exc:  # a collective that failed because another rank died or timed out
        if not distributed.is_collective_failure(exc):
            raise
        print(distributed.peer_failure_message(exc), file=sys.stderr)
        return 3
    finally:
        distributed.shutdown()
        if quiet is not None:
            sys.stdout = sys.__stdout__
            quiet.close()


def _main(args: list[str]) -> int:
    where = f"[{distributed.describe()}] " if distributed.is_distributed() else ""
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0
        if args[0] in ("-V", "--version"):
            print(version_line())
            return 0
        command, rest = args[0], args[1:]
        if command in STEP_COMMANDS:
            return _run_step(STEP_COMMANDS[command], rest)
        if command == "data":
            from mela.data_cli import main as data_main

            return data_main(rest)
        if command == "tasks":
            from mela.tasks_cli import main as tasks_main

            return tasks_main(rest)
        if command == "workspace":
            return _workspace(rest)
        if command == "labels":
            from mela.labels_cli import main as labels_main

            return labels_main(rest)
        if command == "report":
            from mela.experiments.aggregate import report_sections
            from mela.reporting.report import main as report_main

            return report_main(rest, report_sections)
        if command in ("predict", "embed", "export"):
            from mela.inference_cli import main as inference_main

            return inference_main(command, rest)
        if command == "models":
            from mela.models import available_models, model_info

            names = available_models()
            width = max(map(len, names), default=0)
            print("\n".join(f"{name:<{width}}  {model_info(name).description}".rstrip() for name in names))
            return 0
        valid = ", ".join([*STEP_COMMANDS, "data", "tasks", "workspace", "models", "report", "labels", "predict",
                           "embed", "export"])
        raise MelaError(f"unknown command '{command}'; valid commands: {valid}")
    except MelaError as exc:
        print(f"error: {where}{exc}", file=sys.stderr)
        distributed.record_failure(exc)
        return 2
    except BrokenPipeError:  # e.g. `mela ... --help | head`
        return 0
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with the same run_name to resume from the last epoch",
              file=sys.stderr)
        return 130


def hydra_entry(name: str) -> None:
    """The reference's interface: ``python learn_meta_repr.py key=value ...`` from the repo root.

    A thin ``@hydra.main`` over the same pure ``run(cfg)``; one-line errors, no traceback.
    """
    import hydra

    keep_freed_memory()
    from mela.config import check_types, compose_config, default_config, strip_hydra

    try:  # validate the overrides first, so a typo is one line rather than Hydra's report
        compose_config(name, [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
    except MelaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(version_base=None, config_path="pkg://mela.conf", config_name=name)
    def _main(cfg: DictConfig) -> None:
        try:
            job_cfg = strip_hydra(cfg)
            check_types(default_config(name), job_cfg)
            step_runner(name)(job_cfg)
        except MelaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    sys.exit(main())
