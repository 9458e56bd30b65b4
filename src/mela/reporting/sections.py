"""The pieces a report is made of (tables, images, ready HTML, titled sections) and a run's config reader:
shared by ``mela report`` (:mod:`mela.reporting.report`) and the sweep aggregate (:mod:`mela.experiments.aggregate`),
which builds its sections from them without importing the report itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf


def read_config(path: Path) -> dict:
    """A run's config.yaml as plain nested dicts ({} when absent)."""
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Raw:
    """Ready HTML (well-formed) and its Markdown stand-in, e.g. a learn_labeler run's gallery."""

    html: str
    markdown: str


@dataclass
class Section:
    title: str
    items: list[Table | Image | Raw | str] = field(default_factory=list)
