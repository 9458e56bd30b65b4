"""A collection of tasks labelled only locally: what MeLa users actually have, in one ragged representation.

Each task is a small labelling job with its own few classes and its own class names; names mean nothing
across tasks ("0" in two tasks are two unrelated classes unless ``truth.csv`` says otherwise). Tasks differ
in ways (2 and up) and in images per class (1 and up, unbalanced), so nothing here has a fixed task shape.

Representation (:class:`TaskCollection`), compressed-sparse-row style, three levels:

- ``images`` (N, H, W, C) uint8: every distinct image once. An image used by several tasks (overlapping
  labelling jobs) is one row: file loaders read each distinct file once, and all loaders keep one row per
  distinct pixel content.
- task classes: task ``t`` owns the classes ``task_offsets[t]:task_offsets[t + 1]`` (K classes over all tasks,
  ``class_names[k]`` the local name, ``class_truth[k]`` the true global class when it is known);
- items: class ``k`` owns the items ``class_offsets[k]:class_offsets[k + 1]``, and ``item_image[i]`` is the
  image row of item ``i``.

So a task is a contiguous slice at every level; per-item views (``item_task``, ``item_class``,
``item_local_class``) are derived by ``np.repeat`` when needed. Memory is O(N pixels + M items + K + T),
with no per-task Python objects once loaded.

Three inputs load into it, with the same checks and the same image rules as ``dataset=custom``
(:mod:`mela.data.images`), except that a collection whose images all share one size keeps that size unless
``image_size`` is given:

- :func:`load_folder`: ``TASKS/<task_id>/<local_class>/<image files>``;
- :func:`load_manifest`: a CSV with columns ``path,task,local_label`` (paths relative to the manifest),
  streamed row by row into integer arrays, each distinct file read once;
- :func:`from_pairs`: Python ``(images, local_labels)`` pairs, one per task.

An optional ``truth.csv`` (``task,local_label,global_label``) beside the input gives the true global class of
each task class (for scoring the labeler only). Bad input (a task with fewer than 2 classes, a class with no
image, an unreadable or missing image file, a duplicate row, an image in two classes of one task) is one
:class:`MelaError` line naming the task and file; with ``skip_bad_tasks=True`` such tasks are skipped and
listed in ``collection.skipped`` (counts by reason: :meth:`TaskCollection.skip_counts`), never dropped silently.

Ordering is canonical: tasks and, within a task, classes in natural name order ("job2" before "job10");
items of a class in file-name order (folder), row order (manifest) or given order (pairs); image rows in
order of first use. The same tasks therefore load into the same collection from every form.

Modules: :mod:`~mela.data.tasks.collection` (the representation), :mod:`~mela.data.tasks.episodes` (held-out
tasks, support/query splits, scorable tasks), :mod:`~mela.data.tasks.build` (the loading engine every form
shares), :mod:`~mela.data.tasks.formats` (the three input forms and :func:`load_tasks`),
:mod:`~mela.data.tasks.truth` (``truth.csv``), :mod:`~mela.data.tasks.options` (:class:`LoadOptions`, what every
form reads from the user's settings).
"""

from __future__ import annotations

from mela.data.tasks.build import DEFAULT_IMAGE_SIZE
from mela.data.tasks.collection import SKIP_REASONS, SkippedTask, TaskCollection
from mela.data.tasks.episodes import SupportQuery, check_scorable, scorable_tasks, support_query, tasks_holdout
from mela.data.tasks.formats import MANIFEST_COLUMNS, MANIFEST_FILE, from_pairs, load_folder, load_manifest, load_tasks
from mela.data.tasks.options import LoadOptions
from mela.data.tasks.truth import TRUTH_COLUMNS, TRUTH_FILE, attach_truth, read_truth

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MANIFEST_COLUMNS",
    "MANIFEST_FILE",
    "SKIP_REASONS",
    "TRUTH_COLUMNS",
    "TRUTH_FILE",
    "LoadOptions",
    "SkippedTask",
    "SupportQuery",
    "TaskCollection",
    "attach_truth",
    "check_scorable",
    "from_pairs",
    "load_folder",
    "load_manifest",
    "load_tasks",
    "read_truth",
    "scorable_tasks",
    "support_query",
    "tasks_holdout",
]
