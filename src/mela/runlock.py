"""One run folder, one writer: an exclusive lock file taken before a step writes anything.

Two launches with the same ``run_name`` would otherwise interleave their logs and
overwrite each other's checkpoints. The lock is a file created atomically
(``O_CREAT | O_EXCL``) holding the holder's host, PID and start time as JSON. While
held, the holder also keeps an ``flock`` on it (where the platform has one), which
the kernel drops when the process dies, however it dies.

A lock left by a dead process (``kill -9``, power loss) is stale: on the same host
it is recognised (no ``flock`` held, and the PID is gone or now belongs to a process
started at another time) and taken over with a note. A lock from another host cannot
be checked from here; the error says which file to delete if that run is gone.
Only one process per run should take the lock (rank 0 under torchrun).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from mela.errors import MelaError

try:  # not on Windows; the PID check alone then decides whether a holder is alive
    import fcntl
except ImportError:  # pragma: no cover - POSIX everywhere mela is tested
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"
_READ_TRIES = 20  # a lock file is written right after it is created: wait up to ~1 s for its content
_ATTEMPTS = 5  # stale-lock takeovers racing with other launches: retries before giving up


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux ``/proc``); None where unknown.

    Stored in the lock so that a PID reused by an unrelated process after a crash
    is not mistaken for the holder.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so split after its last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` of this host exists and (when ``start_ticks`` is given and known) is the same one."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return False
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False
    return True


def _flock_held_elsewhere(fd: int) -> bool:
    """True when another open file description holds an flock on ``fd``'s file (a live holder)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # file system without flock: fall back to the PID check
    return False


def _as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _describe(info: dict) -> str:
    return f"host {info.get('host', '?')}, PID {info.get('pid', '?')}, since {info.get('started', '?')}"


class RunLock:
    """Exclusive lock on a run folder, as a context manager.

    ``with RunLock(run_dir, log=ctx.log):`` creates ``run_dir/run.lock`` (the folder
    too, if needed) or raises MelaError naming the holder; the file is removed on
    exit, exceptions included. ``note`` says whether a stale lock was taken over.
    """

    def __init__(self, run_dir: Path | str, log: Callable[[str], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.log = log or (lambda message: print(f"mela: {message}", file=sys.stderr))
        self.note: str | None = None
        self._fd: int | None = None
        self._ino: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _info(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_ticks": process_start_ticks(os.getpid())}

    def _os_error(self, exc: OSError) -> MelaError:
        return MelaError(f"cannot create the run lock {self.path} ({exc.strerror or exc}); "
                         "check that the workspace is a writable folder")

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; MelaError if a live run holds it."""
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MelaError(f"cannot create the run folder {self.run_dir} ({exc.strerror or exc}); "
                            "check that the workspace is a writable folder") from exc
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            except OSError as exc:
                raise self._os_error(exc) from exc
            self._own(fd)
            return self
        raise MelaError(f"could not take the run lock {self.path}: other launches keep taking it; "
                        "start one run per run_name")

    def _own(self, fd: int) -> None:
        """Hold ``fd`` (just created by us) as the lock: flock it, write who we are."""
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # a stale-lock taker opened our brand-new file: it will see our PID alive
                except OSError:
                    pass  # no flock on this file system: the PID check is what others use
            os.write(fd, (json.dumps(self._info()) + "\n").encode())
            os.fsync(fd)
            self._ino = os.fstat(fd).st_ino
        except OSError as exc:
            os.close(fd)
            self._unlink_quietly()
            raise self._os_error(exc) from exc
        self._fd = fd

    def _read(self, fd: int) -> dict | None:
        """The holder's JSON, waiting briefly for a holder that has just created the file; None if unreadable."""
        for _ in range(_READ_TRIES):
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 4096)
            try:
                info = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                time.sleep(0.05)
                continue
            if isinstance(info, dict):
                return info
            break
        return None

    def _clear_if_stale(self) -> None:
        """Inspect the existing lock: raise for a live holder, delete a stale one (with a note)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return  # released meanwhile: try to create it again
        except OSError as exc:
            raise self._os_error(exc) from exc
        try:
            if _flock_held_elsewhere(fd):
                info = self._read(fd) or {}
                raise self._held_error(info)
            # We now hold an flock on the old file, so a second taker cannot remove it under us.
            info = self._read(fd)
            same_file = self._same_file(fd)
            if not same_file:
                return  # replaced by another launch meanwhile: look again
            if info is None:
                if time.time() - os.fstat(fd).st_mtime < 5.0:
                    raise MelaError(f"run folder {self.run_dir} is being claimed by another launch "
                                    f"({self.path} has no holder yet); start one run per run_name")
                reason = "unreadable"
            elif self._holder_may_live(info):
                raise self._held_error(info)
            else:
                reason = f"left by {_describe(info)}, no longer running"
            os.unlink(self.path)
            self.note = f"took over the stale run lock {self.path} ({reason})"
            self.log(self.note)
        finally:
            os.close(fd)

    @staticmethod
    def _holder_may_live(info: dict) -> bool:
        """A holder on another host cannot be checked from here, so it counts as alive."""
        if info.get("host") != socket.gethostname():
            return True
        return pid_alive(_as_int(info.get("pid")) or -1, _as_int(info.get("start_ticks")))

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _held_error(self, info: dict) -> MelaError:
        here = info.get("host") == socket.gethostname()
        advice = ("wait for it to finish or pick another run_name" if here else
                  f"wait for it to finish, pick another run_name, or delete {self.path} if that run is gone")
        return MelaError(f"run folder {self.run_dir} is in use by another mela run ({_describe(info)}); {advice}")

    def _unlink_quietly(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the flock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._same_file(fd):
                self._unlink_quietly()
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
