"""Hydra's multirun syntax: value lists, ranges, quoting, and the order of the jobs."""

from __future__ import annotations

import pytest

from mela.errors import MelaError
from mela.experiments.overrides import parse_sweep


def test_the_jobs_are_the_product_of_the_lists_with_the_last_key_changing_fastest() -> None:
    spec = parse_sweep(["seed=0,1,2", "learn_labeler.K=300,400", "n_ways=4"])
    jobs = spec.jobs()
    assert spec.n_jobs == len(jobs) == 6
    assert [j.swept for j in jobs[:3]] == [{"seed": "0", "learn_labeler.K": "300"},
                                          {"seed": "0", "learn_labeler.K": "400"},
                                          {"seed": "1", "learn_labeler.K": "300"}]
    assert jobs[1].overrides == ("n_ways=4", "seed=0", "learn_labeler.K=400")
    assert [j.index for j in jobs] == list(range(6))


def test_a_quoted_value_with_a_comma_is_one_value_and_range_expands() -> None:
    spec = parse_sweep(["lr_decay_epochs='4,5'", "seed=range(0,3)"])
    assert spec.fixed == ("lr_decay_epochs='4,5'",)
    assert spec.keys == ("seed",) and spec.values == (("0", "1", "2"),)


def test_a_value_list_that_does_not_parse_is_one_line() -> None:
    with pytest.raises(MelaError, match="'seed=0,,1' does not parse") as info:
        parse_sweep(["seed=0,,1"])
    assert "\n" not in str(info.value)


def test_run_name_cannot_be_swept_and_a_key_cannot_be_swept_twice() -> None:
    with pytest.raises(MelaError, match="run_name cannot be swept"):
        parse_sweep(["run_name=a,b"])
    with pytest.raises(MelaError, match="swept twice"):
        parse_sweep(["seed=0,1", "seed=2,3"])
