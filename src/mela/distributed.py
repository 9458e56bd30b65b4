"""The one place that knows about torch.distributed: torchrun's ranks, collectives, DDP wrapping, sharding.

Under ``torchrun --nproc_per_node N`` every process runs the same step; this module lets the engine ask
which share of the work is its own and combine the shares. In a plain process (no torchrun environment)
every function is a no-op: rank 0 of a world of 1, the model unwrapped, the whole of every list its share.
The only state is what torch.distributed itself holds (its default process group).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mela.errors import MelaError

T = TypeVar("T")

TIMEOUT_ENV = "MELA_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800  # a hung rank stops the others after this long at the latest (a dead one: at once)


def launched_by_torchrun() -> bool:
    """Whether torchrun's (or a compatible launcher's) environment is present: RANK, WORLD_SIZE, MASTER_ADDR."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def timeout_seconds() -> int:
    """The process group's timeout: ``$MELA_DIST_TIMEOUT_S`` or 1800 s (finite, so a hung rank cannot hold up
    the others forever)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = int(text)
    except ValueError:
        raise MelaError(f"{TIMEOUT_ENV}={text!r} must be a whole number of seconds, e.g. 600") from None
    if value < 1:
        raise MelaError(f"{TIMEOUT_ENV} must be at least 1 second, got {value}")
    return value


def init_from_env(device: str = "auto") -> bool:
    """Join torchrun's process group when its environment is present (once); returns whether distributed.

    The backend is NCCL when the run will use CUDA (``device`` auto or cuda with a GPU visible), gloo on the
    CPU; on CUDA the process takes GPU ``LOCAL_RANK``.
    """
    if dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise MelaError("this torch build has no torch.distributed; run without torchrun or install a full torch")
    on_cuda = torch.cuda.is_available() and str(device or "auto").split(":")[0] in ("auto", "cuda")
    if on_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise MelaError(f"LOCAL_RANK={local} but this machine shows {torch.cuda.device_count()} GPUs; "
                            "set --nproc_per_node to at most the number of GPUs")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_seconds()))
    return True


def is_distributed() -> bool:
    """Whether this process is one of several (an initialised process group of more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that writes logs, checkpoints and run files."""
    return rank() == 0


def describe() -> str:
    """``rank 1/2`` for messages (empty in a single process)."""
    return f"rank {rank()}/{world_size()}" if is_distributed() else ""


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; tensors arrive on the CPU or this rank's GPU)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks (a key missing on a rank counts as 0 there)."""
    if not is_distributed():
        return dict(values)
    gathered = all_gather_object(values)
    keys = sorted(set().union(*gathered))  # a rank with no share of any step has no keys
    return {k: float(sum(g.get(k, 0.0) for g in gathered)) for k in keys}


def shutdown() -> None:
    """Leave the process group (at the end of the command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device | None:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: CUDA devices become ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def check_divisible(count: int, what: str) -> None:
    """Refuse a global batch (tasks per step, images per batch) that the ranks cannot share equally."""
    n = world_size()
    if count % n:
        raise MelaError(f"{what}={count} is not a multiple of the {n} processes; set {what} to a multiple of {n} "
                        "(the global batch stays the same whatever the number of processes)")


def shard(items: Sequence[T] | np.ndarray | torch.Tensor) -> Sequence[T] | np.ndarray | torch.Tensor:
    """This rank's share of ``items``: every ``world_size``-th element from position ``rank`` (disjoint, all
    covered; shares differ in size by at most one)."""
    n = world_size()
    return items if n == 1 else items[rank()::n]


def unshard(parts: list[list[T]], total: int) -> list[T]:
    """Put the strided shares of :func:`shard` (one list per rank, in rank order) back into the original order."""
    out: list = [None] * total
    n = len(parts)
    for r, part in enumerate(parts):
        out[r::n] = part
    return out


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks (gradients all-reduced), else itself."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


@contextlib.contextmanager
def uneven_steps(module: torch.nn.Module) -> Iterator[None]:
    """Around an epoch's steps: a rank with no share in the last step sits it out (DDP's join) instead of
    hanging the others."""
    join = getattr(module, "join", None)
    if join is None or not is_distributed():
        yield
        return
    with join():
        yield


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed: a peer closed its connection (it died) or the group's
    timeout passed (it hangs)."""
    dist_error = getattr(dist, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(k in text for k in (
        "Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe", "NCCL",
        "gloo"))


def survivor_message(why: str) -> str:
    """The one line of a rank stopped because another one failed (``why``: what it saw)."""
    return (f"error: [{describe() or 'rank ?'}] stopped because another process of this run failed ({why}): its own "
            "error line is above and torchrun's summary names its rank (torchrun --log-dir DIR --tee 3 keeps each "
            "rank's output); the run's log.txt is in the run folder named above; rerun the same command to resume "
            "from the last epoch")


def peer_failure_message(exc: BaseException) -> str:
    """The line for a rank whose collective failed: a peer died (connection closed) or hangs (timeout)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:120]  # gloo's source location first: drop it
    return survivor_message(f"{first}; process-group timeout {timeout_seconds()} s, ${TIMEOUT_ENV}")


def record_failure(exc: BaseException) -> None:
    """Under torchrun, leave ``exc`` in the rank's error file, so torchrun's failure summary shows this rank's
    message as the root cause (not just an exit code)."""
    if not is_distributed() or "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    with contextlib.suppress(Exception):  # the summary is a courtesy: never hide the error itself
        ErrorHandler().record_exception(exc)


def stop_quietly_when_told() -> None:
    """When torchrun stops this rank (SIGTERM: another rank failed), say so in one line instead of a traceback."""
    import signal
    import sys

    if not is_distributed():
        return
    message = survivor_message("torchrun stopped this one")

    def stop(signum: int, _frame: object) -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
