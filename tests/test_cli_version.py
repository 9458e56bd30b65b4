"""``mela --version`` / ``-V`` and ``python -m mela``: the first things a new user types."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mela
from mela.cli import main


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_mela_and_torch_versions_and_the_device_auto_picks(flag, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert out == f"mela {mela.__version__} (torch {torch.__version__}, device: cpu)\n" and err == ""


def test_version_names_the_gpu_when_auto_picks_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    assert main(["-V"]) == 0
    assert capsys.readouterr().out.strip().endswith("device: cuda (NVIDIA Test GPU))")


def test_the_usage_text_mentions_the_version_flag(capsys):
    assert main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def test_python_dash_m_mela_is_the_mela_command():
    version = subprocess.run([sys.executable, "-m", "mela", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith(f"mela {mela.__version__} (torch ")
    unknown = subprocess.run([sys.executable, "-m", "mela", "no-such-command"], capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown command 'no-such-command'")
