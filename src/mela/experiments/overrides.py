"""Hydra's multirun syntax: ``key=a,b,c`` (and ``range(0,3)``) expands into the product of the lists.

Parsing uses Hydra's own override grammar, so quoting works as in Hydra (``lr_decay_epochs='4,5'`` is one
value). Jobs come in Hydra's order: the product of the lists, the last swept key changing fastest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from mela.errors import MelaError


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: its index, every override it runs with, and the values of the swept keys."""

    index: int
    overrides: tuple[str, ...]
    swept: dict[str, str]


@dataclass(frozen=True)
class SweepSpec:
    """The parsed command line of a multirun: overrides shared by every job and the swept keys' values."""

    fixed: tuple[str, ...]
    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @property
    def n_jobs(self) -> int:
        n = 1
        for values in self.values:
            n *= len(values)
        return n

    def jobs(self) -> list[SweepJob]:
        """Every combination of the swept values, in Hydra's order (the last key changes fastest)."""
        out = []
        for i, combo in enumerate(itertools.product(*self.values)):
            overrides = (*self.fixed, *(f"{k}={v}" for k, v in zip(self.keys, combo, strict=True)))
            out.append(SweepJob(i, overrides, {k.lstrip("+~"): v for k, v in zip(self.keys, combo, strict=True)}))
        return out


def parse_sweep(overrides: list[str]) -> SweepSpec:
    """Split ``overrides`` into shared ones and swept lists; a list that does not parse is a one-line error."""
    parser = OverridesParser.create()
    fixed, keys, values = [], [], []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise MelaError(f"'{text}' does not parse as a setting or a list of values ({first}); write "
                            "key=a,b,c or key=range(0,3), and quote a value holding a comma: key='4,5'") from exc
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(text)
            continue
        if override.key_or_group == "run_name":
            raise MelaError("run_name cannot be swept: give one run_name (the sweep's name; its jobs are "
                            "<run_name>_0, <run_name>_1, ...) or none")
        if key in keys:
            raise MelaError(f"{key} is swept twice; give it one list of values")
        listed = tuple(str(v) for v in override.sweep_string_iterator())
        if not listed:
            raise MelaError(f"'{text}' sweeps an empty list of values")
        keys.append(key)
        values.append(listed)
    return SweepSpec(tuple(fixed), tuple(keys), tuple(values))
