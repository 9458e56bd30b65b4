"""How a data set of the user's images is read: one small object instead of three loose arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadOptions:
    """What every task loader (and ``dataset=custom``'s image size) reads from the user's settings.

    Attributes:
        image_size: side the images are resized to; None keeps a collection's one shared size (mixed sizes go
            to ``DEFAULT_IMAGE_SIZE``) and means 84 for ``dataset=custom``.
        truth: a ``truth.csv`` (task, local_label, global_label) to read instead of the one beside the tasks;
            the Python pairs form takes its global labels with the pairs instead.
        skip_bad_tasks: skip a task that cannot be used (counted in ``TaskCollection.skipped``) instead of
            stopping at the first with a one-line error.
    """

    image_size: int | None = None
    truth: str | Path | None = None
    skip_bad_tasks: bool = False
