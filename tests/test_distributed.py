"""Training and evaluation under torchrun: 2 processes (gloo, CPU) against 1, on tiny data.

The 2-process runs are real `torchrun` launches (``python -m torch.distributed.run --standalone``) in
subprocesses; their 1-process counterparts run here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import mela
from mela import distributed
from mela.engine.checkpoint import load_checkpoint
from mela.errors import MelaError
from mela.steps import learn_meta_repr, meta_eval
from mela.workspace import saves_dir

from .ddp_worker import fixed_evaluation
from .steps.test_pipeline_cli import write_glyph_slice

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[1]
META_EPOCHS = 4
FAST = [f"learn_meta_repr.epochs={META_EPOCHS}", f"learn_meta_repr.lr_decay_epochs={META_EPOCHS - 1}",
        "learn_labeler.epochs=1", "learn_labeler.lr_decay_epochs=1", "learn_labeler.K=40", "sup_baseline.epochs=1",
        "sup_baseline.lr_decay_epochs=1", "fine_tune.epochs=1", "n_queries=2", "val_db_size=10", "test_db_size=20",
        "meta_eval.n_queries=5", "n_ways=4", "plots=false", "tensorboard=false", "device=cpu", "image_size=16"]


def torchrun(args: list[str], workspace: Path, **popen: object) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node 2`` (a free port of its own) with this checkout's sources first."""
    src = str(Path(mela.__file__).resolve().parents[1])
    env = {**os.environ, "WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


# Pure pieces, in one process


def test_unshard_puts_the_strided_shares_of_every_rank_back_in_the_original_order():
    items = list(range(11))
    parts = [items[r::3] for r in range(3)]
    assert sorted(sum(parts, [])) == items  # disjoint and covering
    assert distributed.unshard(parts, len(items)) == items


def test_a_single_process_is_rank_0_of_1_and_every_collective_is_the_identity():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard([4, 5, 6]) == [4, 5, 6]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    assert distributed.sum_over_ranks({"loss": 2.5}) == {"loss": 2.5}
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    distributed.check_divisible(3, "tasks_per_step")  # any count divides among one process


def test_a_bad_process_group_timeout_is_one_line(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(MelaError, match="whole number of seconds"):
        distributed.timeout_seconds()


# Two processes


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_evaluate_a_fixed_model_exactly_as_one_and_refuse_three_tasks_per_step(tmp_path):
    data = [f"custom_path={tmp_path / 'missing.npz'}"]  # refused before any data is read
    out = tmp_path / "seen.json"
    finish(torchrun([str(WORKER), str(out), "dataset=custom", *data], tmp_path / "ws"))
    ranks = json.loads(out.read_text())["ranks"]
    one = fixed_evaluation()
    assert [r["world_size"] for r in ranks] == [2, 2]
    for seen in ranks:  # every rank holds the gathered result, and it is the 1-process one, to the last bit
        assert seen["features_sum"] == one["features_sum"]
        assert seen["per_task"] == one["per_task"] and len(one["per_task"]) == 21
        assert (seen["collection_acc"], seen["collection_tasks"]) == (one["collection_acc"], one["collection_tasks"])
        assert (seen["model_acc"], seen["model_ci"]) == (one["model_acc"], one["model_ci"])
    for rank, seen in enumerate(ranks):
        assert seen["refusal_code"] == 2
        assert seen["refusal_lines"] == [
            f"error: [rank {rank}/2] tasks_per_step=3 is not a multiple of the 2 processes; set tasks_per_step to "
            "a multiple of 2 (the global batch stays the same whatever the number of processes)"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's ranks)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def environment(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_text().split("\0")
    except OSError:
        return []


def epoch_values(log: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"\| epoch \d+/\d+ .* {key}=([\d.]+)", log)]


@pytest.mark.ddp
@pytest.mark.slow
def test_the_pipeline_under_two_processes_resumes_after_a_kill_covers_every_task_and_agrees_with_one(tmp_path):
    npz, split = write_glyph_slice(tmp_path)
    args = ["-m", "mela.cli", "pipeline", "dataset=custom", f"custom_path={npz}", f"custom_split={split}",
            "run_name=two", *FAST]
    workspace = tmp_path / "ws"
    saves = saves_dir(workspace)
    meta_dir = saves / "learn_meta_repr" / "two"
    killed = torchrun(args, workspace)
    deadline = time.monotonic() + 180
    while not (meta_dir / "last.pt").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank_1 = [pid for pid in descendants(killed.pid) if "RANK=1" in environment(pid)]
    assert len(rank_1) == 1
    os.kill(rank_1[0], signal.SIGKILL)  # one rank lost: torchrun must stop the other, not leave it hanging
    told, _ = killed.communicate(timeout=120)
    assert killed.returncode != 0
    assert "error: [rank 0/2] stopped because another process of this run failed (" in told
    assert re.search(r"Root Cause.*\n(?:.*\n){0,4}\s*rank\s*: 1 \(local_rank: 1\)", told), told[-2000:]
    stopped_at = load_checkpoint(meta_dir / "last.pt")["epoch"]
    assert 1 <= stopped_at < META_EPOCHS and not (meta_dir / "done.json").exists()

    out = finish(torchrun(args, workspace))
    results = json.loads((saves / "pipeline" / "two" / "results.json").read_text())
    meta_log = (meta_dir / "log.txt").read_text()
    assert f"resumed from {meta_dir / 'last.pt'} at epoch {stopped_at}/{META_EPOCHS}" in meta_log
    history = json.loads((meta_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, META_EPOCHS + 1))
    assert OmegaConf.load(meta_dir / "config.yaml").world_size == 2
    assert "2 processes (torchrun, DDP)" in meta_log
    assert "[rank" not in out  # no rank failed

    # Every epoch of every step trained on all its tasks / images once, as one process does.
    for step, what, count_line in (("learn_meta_repr", "tasks", r"(\d+) training tasks per epoch"),
                                   ("fine_tune", "tasks", r"(\d+) training tasks per epoch"),
                                   ("learn_labeler", "images", r"supervised training on (\d+) images"),
                                   ("sup_baseline", "images", r"supervised training on (\d+) images")):
        log = (saves / step / "two" / "log.txt").read_text()
        per_epoch = int(re.search(count_line, log).group(1))
        seen = epoch_values(log, f"{what}_seen")
        assert seen and all(s == per_epoch for s in seen), (step, per_epoch, seen)
    assert int(re.search(r"(\d+) training tasks per epoch", meta_log).group(1)) == 5  # 12 classes, 4 ways, 5 shots

    # One process, seeds 0 and 1, with the same settings as the 2-process learn_meta_repr; then the same meta_eval.
    saved = OmegaConf.to_container(OmegaConf.load(meta_dir / "config.yaml"))
    saved.pop("world_size")
    eval_saved = OmegaConf.to_container(OmegaConf.load(saves / "meta_eval" / "two_meta_repr" / "config.yaml"))
    eval_saved.pop("world_size")
    one_process = []
    for seed in (0, 1):
        cfg = OmegaConf.create({**saved, "seed": seed, "run_name": f"one{seed}", "workspace": str(workspace)})
        learn_meta_repr.run(learn_meta_repr.read_settings(cfg))
        cfg = OmegaConf.create({**eval_saved, "run_name": f"one{seed}_eval", "workspace": str(workspace),
                                "pretrained_model": str(saves / "learn_meta_repr" / f"one{seed}")})
        one_process.append(meta_eval.run(meta_eval.read_settings(cfg))["rows"])
    two_rows = [r for r in results["rows"] if r["model"] == "meta_repr"]
    for shots in (1, 5):
        two = next(r for r in two_rows if r["shots"] == shots)
        ones = [next(r for r in rows if r["shots"] == shots) for rows in one_process]
        low = min(r["acc"] for r in ones) - max(r["ci"] for r in ones)
        high = max(r["acc"] for r in ones) + max(r["ci"] for r in ones)
        # Two seeds under-sample the seed-to-seed spread (20 test tasks: CIs of ~5 points), so the 2-process
        # result agrees when its own 95 % interval meets the 1-process runs' range widened by their CIs.
        assert two["acc"] + two["ci"] >= low and two["acc"] - two["ci"] <= high, (shots, two, ones)
    assert np.isfinite([h["loss"] for h in history]).all()
