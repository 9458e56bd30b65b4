"""Fixtures of the step tests: a small task collection written as folders, with truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from mela.data.task_maker import MakeSettings, make_info, make_tasks, write_tasks
from tests.conftest import make_synthetic_split


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory) -> Path:
    """60 tasks of 2-5 ways over 16 synthetic 16 px classes, 1-4 images per class, in folder form with truth."""
    split = make_synthetic_split(16, 12, 5)
    made = make_tasks(split, MakeSettings(n_tasks=60, ways=(2, 5), shots=(1, 4), recur=(4, 20), seed=3))
    out = tmp_path_factory.mktemp("tasks") / "jobs"
    write_tasks(made, split, out, "folder", make_info(made, MakeSettings(n_tasks=60), "synthetic"))
    return out
