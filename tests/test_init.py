"""``import mela``: what ``dir(mela)`` (tab completion) shows, and that every public name resolves."""

from __future__ import annotations

import importlib

import pytest

import mela


def _dunders(module) -> set[str]:
    return {name for name in vars(module) if name.startswith("__") and name.endswith("__")}


def test_dir_lists_exactly_the_public_api_and_the_modules_own_dunder_names():
    assert set(dir(mela)) == set(mela.__all__) | _dunders(mela)
    assert dir(mela) == sorted(dir(mela))
    assert not {"TYPE_CHECKING", "annotations", "importlib"} & set(dir(mela))


def test_dir_leaves_out_submodules_imported_after_mela():
    importlib.import_module("mela.cli")
    assert "cli" in vars(mela) and "cli" not in dir(mela)


def test_every_public_name_resolves_and_the_lazy_table_covers_all_of_them():
    assert len(mela.__all__) == len(set(mela.__all__))
    for name in mela.__all__:
        assert getattr(mela, name) is not None, name
    assert set(mela.__all__) - {"__version__"} == set(mela._API)


def test_a_name_outside_the_api_still_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        mela.no_such_name  # noqa: B018
