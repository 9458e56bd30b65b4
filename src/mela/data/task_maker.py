"""Make a locally labelled task collection from a labelled data set (``mela tasks make``).

Why: users try the tasks feature, and tests and benchmarks get data, on collections that look like real
labelling jobs, with the true global classes kept aside in ``truth.csv`` to score the labeler.

What is drawn, all from one seed:

- each task's ways, uniformly in ``ways``; each task class's images, uniformly in ``shots`` (so classes are
  unbalanced inside a task), never more than the class holds;
- how often each global class recurs over the collection: classes, in a random order, each draw a
  recurrence in ``recur`` with probability proportional to 1 / r (most classes rare, a few frequent) until
  the task classes are filled, so a small collection uses a subset of the classes; when even all classes
  fall short, all are used, spread over the whole of ``recur`` (the rarest class at its low end, the most
  frequent at its high end) with as many rare classes as the load allows;
- which classes share a task: the class slots are shuffled and dealt out, then any task holding a class
  twice swaps it with another task;
- local names: each task names its classes in one of a few schemes ("0", "1", ...; "a", "b", ...;
  "A", "B", ...; "class 1", ...; short words like "cat"), assigned in a shuffled order, so one name means
  different classes in different tasks;
- images: drawn at random inside the class for each task, so an image can appear in several tasks (as
  when labelling jobs overlap); ``overlap=False`` uses each image at most once (then a class recurs at most
  ``images // shots_low`` times).

Two output formats, both with ``truth.csv`` (task, local_label, global_label) and ``make_info.json``:
``folder`` (``OUT/<task>/<local>/img<row>.png``, a shared image is a file per task) and ``manifest``
(``OUT/images/img<row>.png`` once, ``OUT/manifest.csv`` rows ``path,task,local_label``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mela.data.base import ImageSplit
from mela.data.tasks import MANIFEST_COLUMNS, MANIFEST_FILE, TRUTH_COLUMNS, TRUTH_FILE, TaskCollection, from_pairs
from mela.errors import MelaError

FORMATS = ("folder", "manifest")
INFO_FILE = "make_info.json"
WORDS = ("cat", "dog", "car", "tree", "cup", "red", "blue", "left", "right", "yes", "no", "other", "thing",
         "item", "big", "small", "x", "y", "sun", "box", "pen", "key", "map", "hat")
NAME_SCHEMES = ("digits", "letters", "upper", "class_n", "words")


@dataclass(frozen=True)
class MakeSettings:
    """What ``mela tasks make`` draws (ranges are inclusive)."""

    n_tasks: int = 1000
    ways: tuple[int, int] = (3, 8)
    shots: tuple[int, int] = (1, 5)
    recur: tuple[int, int] = (1, 30)
    overlap: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tasks < 1:
            raise MelaError(f"--tasks must be at least 1, got {self.n_tasks}")
        for name, (lo, hi), least in (("ways", self.ways, 2), ("shots", self.shots, 1), ("recur", self.recur, 1)):
            if lo < least or hi < lo:
                raise MelaError(f"--{name} {lo}-{hi} is not a range LOW-HIGH with {least} <= LOW <= HIGH")
        if self.ways[1] > len(WORDS):
            raise MelaError(f"--ways goes up to {len(WORDS)} (the local name schemes have that many names)")


@dataclass(frozen=True)
class MadeTask:
    """One made task: its id, and per local class its name, true class and item indices (sorted)."""

    task_id: str
    local_names: tuple[str, ...]
    classes: tuple[int, ...]
    items: tuple[np.ndarray, ...]


def _zipf_draw(low: int, cap: int, rng: np.random.Generator) -> int:
    """One recurrence from P(r) proportional to 1 / r on [low, cap]: most classes rare, a few frequent."""
    values = np.arange(low, cap + 1)
    weight = 1.0 / values
    return int(rng.choice(values, p=weight / weight.sum()))


def fit_recurrences(n_slots: int, caps: np.ndarray, low: int, rng: np.random.Generator) -> np.ndarray:
    """Per class, how many tasks use it (0: unused), each in [low, caps[c]], summing to ``n_slots``.

    Classes in a random order each draw a recurrence from P(r) ~ 1 / r until the slots are filled (the
    last draws are trimmed). When all classes together fall short, every class is used, spread over the
    whole range [low, cap] with as many rare classes as the slots allow (a power of the rank; see below).
    """
    eligible = np.flatnonzero(caps >= low)
    if caps[eligible].sum() < n_slots:
        raise MelaError(f"the tasks need {n_slots} task classes but {len(eligible)} classes recurring at most "
                        f"{int(caps.max()) if len(caps) else 0} times give {int(caps[eligible].sum())}; lower "
                        "--tasks or --ways, or raise --recur (or allow overlap)")
    out = np.zeros(len(caps), dtype=np.int64)
    order = rng.permutation(eligible)
    total = 0
    for c in order.tolist():
        if total >= n_slots:
            break
        out[c] = _zipf_draw(low, int(caps[c]), rng)
        total += out[c]
    if total < n_slots:
        out[:] = 0
        cap = caps[order].astype(np.int64)
        high = int(cap.max())
        # Spread the classes over the whole range: rank i gets low + (high - low) * q_i ** a, q_i from 1 down to
        # 0, so the most frequent class recurs about ``high`` times and the rarest ``low``; the exponent a
        # (larger: more rare classes) is the largest that still fills the slots.
        quantile = 1.0 - (np.arange(len(order)) + 0.5) / len(order)

        def filled(exponent: float) -> int:
            return int(np.clip(np.round(low + (high - low) * quantile**exponent), low, cap).sum())

        lo, hi = -12.0, 12.0  # log2 of the exponent; filled() decreases as it grows
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if filled(2.0**mid) >= n_slots else (lo, mid)
        out[order] = np.clip(np.round(low + (high - low) * quantile ** (2.0**lo)), low, cap)
    while out.sum() > n_slots:  # trim the overshoot: one from a random class above the floor, else drop a class
        above = np.flatnonzero(out > low)
        if len(above):
            out[rng.choice(above)] -= 1
        else:
            out[rng.choice(np.flatnonzero(out > 0))] = 0
    return out


def deal_classes(recurrence: np.ndarray, ways: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """Deal each class ``recurrence[c]`` times into tasks of ``ways[t]`` distinct classes (shuffle, then swap
    any repeated class with a random slot of another task)."""
    slots = rng.permutation(np.repeat(np.arange(len(recurrence)), recurrence))
    bounds = np.concatenate([[0], np.cumsum(ways)])
    tasks = [list(slots[bounds[t] : bounds[t + 1]].tolist()) for t in range(len(ways))]
    owner = np.repeat(np.arange(len(ways)), ways)
    members = [set(task) for task in tasks]
    for t, task in enumerate(tasks):
        for j in range(len(task)):
            if task.count(task[j]) == 1:
                continue
            for _attempt in range(10_000):
                u = int(rng.integers(len(slots)))
                other, k = int(owner[u]), int(u - bounds[owner[u]])
                mine, theirs = task[j], tasks[other][k]
                if other != t and theirs not in members[t] and mine not in members[other]:
                    task[j], tasks[other][k] = theirs, mine
                    members[t], members[other] = set(task), set(tasks[other])
                    break
            else:
                raise MelaError("cannot give every task distinct classes with these ranges; raise --recur or lower "
                                "--ways, or use more classes")
    return tasks


def _local_names(n_ways: int, rng: np.random.Generator) -> list[str]:
    """One task's class names: a random naming scheme, in a shuffled order."""
    scheme = NAME_SCHEMES[int(rng.integers(len(NAME_SCHEMES)))]
    if scheme == "digits":
        names = [str(i) for i in range(n_ways)]
    elif scheme == "letters":
        names = [chr(ord("a") + i) for i in range(n_ways)]
    elif scheme == "upper":
        names = [chr(ord("A") + i) for i in range(n_ways)]
    elif scheme == "class_n":
        names = [f"class {i + 1}" for i in range(n_ways)]
    else:
        names = [WORDS[i] for i in rng.choice(len(WORDS), n_ways, replace=False)]
    return [names[i] for i in rng.permutation(n_ways)]


def make_tasks(split: ImageSplit, settings: MakeSettings) -> list[MadeTask]:
    """Draw the task collection (see the module docstring); deterministic for ``settings.seed``."""
    rng = np.random.default_rng([settings.seed, 0x7A5C])
    labels = split.labels
    by_class = np.argsort(labels, kind="stable")
    pools = np.split(by_class, np.cumsum(np.bincount(labels, minlength=split.n_classes))[:-1])
    sizes = np.array([len(p) for p in pools])
    shots_lo, shots_hi = settings.shots
    eligible = sizes >= shots_lo
    if eligible.sum() < settings.ways[1]:
        raise MelaError(f"only {int(eligible.sum())} classes have {shots_lo}+ images, fewer than --ways up to "
                        f"{settings.ways[1]}; lower --ways or --shots, or use a larger data set")
    caps = np.where(eligible, min(settings.recur[1], settings.n_tasks), 0)  # a class is in a task at most once
    if not settings.overlap:
        caps = np.minimum(caps, sizes // shots_lo)
    ways = rng.integers(settings.ways[0], settings.ways[1] + 1, settings.n_tasks)
    recurrence = fit_recurrences(int(ways.sum()), caps, settings.recur[0], rng)
    dealt = deal_classes(recurrence, ways, rng)
    remaining_slots = recurrence.copy()
    unused = [rng.permutation(pool) for pool in pools]  # no-overlap: each class's images, taken in this order
    taken = np.zeros(len(pools), dtype=np.int64)
    width = max(4, len(str(settings.n_tasks - 1)))
    made = []
    for t, classes in enumerate(dealt):
        items = []
        for c in classes:
            if settings.overlap:
                n = int(rng.integers(shots_lo, min(shots_hi, sizes[c]) + 1))
                chosen = rng.choice(pools[c], n, replace=False)
            else:
                left = sizes[c] - taken[c]
                most = min(shots_hi, left - (remaining_slots[c] - 1) * shots_lo)
                n = int(rng.integers(shots_lo, most + 1))
                chosen = unused[c][taken[c] : taken[c] + n]
                taken[c] += n
            remaining_slots[c] -= 1
            items.append(np.sort(chosen))
        made.append(MadeTask(f"job{t:0{width}d}", tuple(_local_names(len(classes), rng)), tuple(classes),
                             tuple(items)))
    return made


def _global_names(split: ImageSplit) -> list[str]:
    """The true class names written to truth.csv: the data set's names when distinct, else the class ids."""
    names = split.class_names
    if names is not None and len(set(names)) == len(names) and all(str(n).strip() for n in names):
        return [str(n) for n in names]
    return [str(c) for c in range(split.n_classes)]


def to_collection(made: list[MadeTask], split: ImageSplit) -> TaskCollection:
    """The made tasks as a :class:`TaskCollection` in memory (what loading the written files gives)."""
    rows, names = split.item_images(), _global_names(split)
    pairs = []
    for task in made:
        image_rows = np.concatenate([rows[items] for items in task.items])
        local = np.concatenate([[name] * len(items) for name, items in zip(task.local_names, task.items, strict=True)])
        truth = [names[c] for c, items in zip(task.classes, task.items, strict=True) for _ in items]
        pairs.append((split.images[image_rows], local, truth))
    return from_pairs(pairs, task_ids=[task.task_id for task in made])


def _save(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MelaError(f"{out} exists and is not an empty folder; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)


def write_tasks(made: list[MadeTask], split: ImageSplit, out: str | Path, fmt: str = "folder",
                info: dict | None = None) -> Path:
    """Write the tasks as a ``folder`` or a ``manifest`` collection with ``truth.csv``; return what to load."""
    if fmt not in FORMATS:
        raise MelaError(f"unknown format '{fmt}'; valid formats: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    _prepare(out)
    rows, names = split.item_images(), _global_names(split)
    width = len(str(max(len(split.images) - 1, 0)))
    written: set[int] = set()
    manifest_rows = []
    for task in made:
        for local, items in zip(task.local_names, task.items, strict=True):
            for row in sorted(set(rows[items].tolist())):
                file_name = f"img{row:0{width}d}.png"
                if fmt == "folder":
                    folder = out / task.task_id / local
                    folder.mkdir(parents=True, exist_ok=True)
                    _save(split.images[row], folder / file_name)
                else:
                    if row not in written:
                        (out / "images").mkdir(exist_ok=True)
                        _save(split.images[row], out / "images" / file_name)
                        written.add(row)
                    manifest_rows.append((f"images/{file_name}", task.task_id, local))
    if fmt == "manifest":
        with open(out / MANIFEST_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(manifest_rows)
    with open(out / TRUTH_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRUTH_COLUMNS)
        for task in made:
            writer.writerows((task.task_id, local, names[c]) for local, c in zip(task.local_names, task.classes,
                                                                                  strict=True))
    if info is not None:
        (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out / MANIFEST_FILE if fmt == "manifest" else out


def make_info(made: list[MadeTask], settings: MakeSettings, source: str) -> dict:
    """What was made, for ``make_info.json`` and the command's summary line."""
    ways = np.array([len(t.classes) for t in made])
    shots = np.array([len(items) for t in made for items in t.items])
    uses = np.bincount(np.concatenate([np.array(t.classes) for t in made]))
    uses = uses[uses > 0]
    return {"source": source, "settings": {**asdict(settings), "ways": list(settings.ways),
                                           "shots": list(settings.shots), "recur": list(settings.recur)},
            "tasks": len(made), "task_classes": int(ways.sum()), "items": int(shots.sum()),
            "global_classes": int(len(uses)), "ways_range": [int(ways.min()), int(ways.max())],
            "shots_range": [int(shots.min()), int(shots.max())],
            "recurrence_min_median_max": [int(uses.min()), float(np.median(uses)), int(uses.max())]}
