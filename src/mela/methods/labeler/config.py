"""The labeler's settings (:class:`LabelerConfig`); the mode is one registered in :mod:`.modes`."""

from __future__ import annotations

from dataclasses import dataclass

from mela.errors import MelaError
from mela.methods.labeler.modes import get_mode


@dataclass(frozen=True)
class LabelerConfig:
    """Settings of the clustering (names follow the reference's config).

    ``mode``: a mode registered in :mod:`mela.methods.labeler.modes`.
    ``count_check`` (improved mode): cluster a second time with a smaller K to tell whether the number of
    clusters came from the data or from K (see :func:`mela.methods.global_labels.count_sensitivity`).
    """

    K: int = 400
    std_factor: float = 3.5
    mode: str = "improved"
    max_passes: int = 30
    spawn_factor: float = 8.0
    merge_factor: float = 20.0
    merge_risk: float = 1.0
    count_check: bool = True

    def __post_init__(self) -> None:
        get_mode(self.mode)  # a registered mode (modes.py), or an error listing them
        if self.K < 1:
            raise MelaError(f"K (number of initial centroids) must be positive, got {self.K}")
        if not self.std_factor >= 0:
            raise MelaError(f"std_factor must be zero or positive, got {self.std_factor}")
        if not self.spawn_factor > 0:
            raise MelaError(f"spawn_factor must be positive, got {self.spawn_factor}")
        if not self.merge_factor >= 0:
            raise MelaError(f"merge_factor must be zero or positive (0 merges only clear duplicates), "
                            f"got {self.merge_factor}")
        if not 0.0 <= self.merge_risk <= 1.0:
            raise MelaError(f"merge_risk must be between 0 and 1, got {self.merge_risk}")
        if self.max_passes < 1:
            raise MelaError(f"max_passes must be at least 1, got {self.max_passes}")
