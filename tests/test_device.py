"""Device choice and process tuning."""

from __future__ import annotations

import sys

import pytest
import torch

from mela.device import keep_freed_memory, pick_device
from mela.errors import MelaError


def test_auto_picks_the_gpu_only_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


def test_asking_for_a_missing_gpu_or_a_bad_name_is_a_one_line_error():
    if not torch.cuda.is_available():
        with pytest.raises(MelaError, match="no CUDA GPU is visible"):
            pick_device("cuda")
    with pytest.raises(MelaError, match="unknown device 'tpu9'"):
        pick_device("tpu9")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keeping_freed_memory_is_accepted_by_glibc():
    assert keep_freed_memory() is True
