"""RunLock: one writer per run folder, checked with real processes, a kill -9 and forged lock files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mela
from mela.errors import MelaError
from mela.runlock import LOCK_NAME, RunLock, pid_alive, process_start_ticks

SRC = str(Path(mela.__file__).resolve().parents[1])

HOLDER = textwrap.dedent("""
    import sys
    from mela.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")

CONTENDER = textwrap.dedent("""
    import sys
    from mela.errors import MelaError
    from mela.runlock import RunLock
    try:
        with RunLock(sys.argv[1]):
            print("acquired", flush=True)
    except MelaError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(2)
""")


def _python(script: str, run_dir: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", script, str(run_dir)], env=env, text=True,
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, **kwargs)


def _start_holder(run_dir: Path) -> subprocess.Popen:
    holder = _python(HOLDER, run_dir)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_on_the_same_run_gets_one_line_naming_the_holders_host_and_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "same"
    holder = _start_holder(run_dir)
    try:
        contender = _python(CONTENDER, run_dir)
        out, _ = contender.communicate(timeout=30)
        assert contender.returncode == 2
        assert out.count("\n") == 1
        assert out.startswith(f"error: run folder {run_dir} is in use by another mela run ")
        assert f"host {socket.gethostname()}, PID {holder.pid}," in out
        assert "pick another run_name" in out
        info = json.loads((run_dir / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    assert not (run_dir / LOCK_NAME).exists()
    contender = _python(CONTENDER, run_dir)
    assert contender.communicate(timeout=30)[0] == "acquired\n"


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path)
    holder.kill()  # SIGKILL: no cleanup runs, the lock file stays
    holder.communicate(timeout=30)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert notes == [lock.note]
    assert f"PID {holder.pid}" in notes[0] and "no longer running" in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.skipif(process_start_ticks(os.getpid()) is None, reason="needs Linux /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path: Path) -> None:
    # Our own PID is alive, but the lock says it started at another time: the PID was reused.
    ticks = process_start_ticks(os.getpid())
    assert pid_alive(os.getpid(), ticks) and not pid_alive(os.getpid(), ticks + 1)
    forged = {"host": socket.gethostname(), "pid": os.getpid(), "started": "yesterday", "start_ticks": ticks + 1}
    (tmp_path / LOCK_NAME).write_text(json.dumps(forged))
    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append):
        pass
    assert len(notes) == 1 and "stale" in notes[0]


def test_a_lock_from_another_host_is_refused_and_the_error_names_the_file_to_delete(tmp_path: Path) -> None:
    forged = {"host": "elsewhere.example", "pid": 4242, "started": "2024-01-01T00:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(forged))
    with pytest.raises(MelaError) as caught:
        RunLock(tmp_path).acquire()
    message = str(caught.value)
    assert "host elsewhere.example, PID 4242, since 2024-01-01T00:00:00" in message
    assert f"delete {tmp_path / LOCK_NAME} if that run is gone" in message and "\n" not in message
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == forged


def test_a_second_lock_in_the_same_process_is_refused_while_the_first_is_held(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(MelaError, match=f"PID {os.getpid()},"):
        RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def test_the_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
        _ = 1 / 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_run_folder_under_a_file_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "ws").write_text("not a folder")
    with pytest.raises(MelaError, match=r"cannot create the run folder .*ws/runs/x \(Not a directory\); check"):
        RunLock(tmp_path / "ws" / "runs" / "x").acquire()


def test_a_lock_file_emptied_by_a_crash_long_ago_is_stale(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("")
    os.utime(tmp_path / LOCK_NAME, (0, 0))
    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append):
        pass
    assert notes and "unreadable" in notes[0]
