"""Every setting of every step and pipeline config, described once: the settings registry.

One :class:`Setting` per key: its type (as text), a one-line doc (with per-config variants where a key means
something else in one step), the configs that accept it, whether it defines the result (a rerun that changes it
is refused: the resume check of :mod:`mela.runs.store`), and ``compat`` for keys kept only so the original
research scripts' command lines keep working (they have no effect, never block a resume, and warn when set to a
non-default value). The default VALUES stay in the YAML files (``mela/conf``), since they differ between steps.

Generated from or checked against this table: the YAML comments and ``docs/settings.md``
(``tools/settings_doc.py``, ``tests/config/test_settings_registry.py``), each step's ``--help``, the keys the
pipeline hands its steps (``feeds``), the type check of overrides and the resume check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# The steps, in the order the pipeline runs them; each has a config of its name (``mela.conf``) and a module in
# ``mela.steps`` registered in ``mela.steps.registry`` (a test checks both against this tuple).
STEP_NAMES = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", "meta_eval")
PIPELINE = "pipeline"  # the kind of every pipeline config (pipeline, pipeline_tasks, pipeline_paper)

# Types with a meaning beyond Python's.
AUTO_FLAG = "auto|true|false"
MODEL_REF = "model reference"  # false / null (none), latest, a run name, a run folder or a file

_ALL = STEP_NAMES
_TRAINING = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline")
_EPISODIC = ("learn_meta_repr", "fine_tune")
_AUGMENTING = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline")
_EVERYWHERE = (*STEP_NAMES, PIPELINE)


@dataclass(frozen=True)
class Setting:
    """One config key.

    Attributes:
        name: the key, as configs and command lines spell it.
        type: its type as text (``int``, ``float``, ``bool``, ``str``, ``auto|true|false``, ``model reference``, ...).
        doc: one line: what it does (the YAML comment, the ``--help`` line, the reference page's cell).
        steps: the configs that accept it: step names and ``pipeline``.
        defines_result: changing it changes what a run computes, so a rerun with another value is refused.
        compat: True, or the steps where it is kept only for the original scripts' command lines (no effect).
        docs: per-config docs where the key means something else there (``{"meta_eval": "..."}``).
        feeds: pipeline keys only: the step keys it sets, ``key`` in every step that has it (where not
            ``compat``) or ``step.key`` in that step; None: its own name in every step that has it.
    """

    name: str
    type: str
    doc: str
    steps: tuple[str, ...]
    defines_result: bool = True
    compat: bool | tuple[str, ...] = False
    docs: Mapping[str, str] = field(default_factory=dict)
    feeds: tuple[str, ...] | None = None

    def doc_for(self, config: str) -> str:
        """The doc in config ``config`` (a step name, or any pipeline config)."""
        return self.docs.get(config_kind(config), self.doc)

    def is_compat(self, step: str) -> bool:
        """Kept in ``step`` only so the original scripts' command lines keep working (no effect there)."""
        return self.compat is True or (isinstance(self.compat, tuple) and config_kind(step) in self.compat)

    def defines(self, step: str) -> bool:
        """A rerun of ``step`` with another value is refused (the compat keys never are)."""
        return self.defines_result and not self.is_compat(step)

    def compat_reason(self, step: str) -> str:
        """Why a compat key has no effect in ``step`` (its doc without the "accepted for compatibility" lead)."""
        return self.doc_for(step).removeprefix(_NO_EFFECT)


class CompatWarning(UserWarning):
    """A key kept only for the original scripts' command lines was set to a value other than its default."""


def config_kind(config: str) -> str:
    """``pipeline_paper`` -> ``pipeline``; a step's config is its own kind."""
    return PIPELINE if config.startswith(PIPELINE) else config


_NO_EFFECT = "accepted for compatibility: "
_REF = "latest, a run name, a run folder or a .pt file"
_AUG = "(data_aug and sup_data_aug)"

SETTINGS: dict[str, Setting] = {s.name: s for s in (
    # --- where a run lives and what it runs on (none of them defines the result) ---
    Setting("logger_name", "str", _NO_EFFECT + "the original's log file name; mela logs to <run>/log.txt", _ALL,
            defines_result=False, compat=True),
    Setting("trial", "str", "tag in the default run name <dataset>_<model>_trial<trial>_<timestamp>", _ALL,
            defines_result=False),
    Setting("seed", "int", "seeds the task draws, the initialisation and the augmentation", _EVERYWHERE),
    Setting("device", "str", "auto | cpu | cuda | cuda:N", _EVERYWHERE, defines_result=False),
    Setting("precision", "auto|fp32|bf16", "auto (bf16 autocast where native: GPU, AVX512-BF16/AMX CPU) | fp32 | bf16",
            _EVERYWHERE, defines_result=False,
            docs={"meta_eval": "features: auto (bf16 autocast where native: GPU, AVX512-BF16/AMX CPU) | fp32 | bf16"}),
    Setting("channels_last", AUTO_FLAG, "channels_last memory format: auto (where measured faster) | true | false",
            _EVERYWHERE, defines_result=False),
    Setting("workspace", "path", "default: $WORKSPACE, else ~/mela-workspace", _EVERYWHERE, defines_result=False),
    Setting("run_name", "str", "default: <dataset>_<model>_trial<trial>_<timestamp>; reuse one to resume", _EVERYWHERE,
            defines_result=False, feeds=(),
            docs={"meta_eval": "default: <dataset>_<model>_trial<trial>_<timestamp>; a rerun evaluates again",
                  PIPELINE: "default: <dataset>_<model>_<timestamp>; reuse one to resume (finished steps are kept)"}),
    Setting("progress", AUTO_FLAG, "auto: a bar per epoch on a terminal, plain lines in logs and pipes; true | false",
            _EVERYWHERE, defines_result=False, compat=("meta_eval",),
            docs={"meta_eval": _NO_EFFECT + "evaluation logs one line per shot count"}),
    Setting("tensorboard", AUTO_FLAG, "events in <run>/tb: auto (if installed: pip install mela[tb]) | true | false",
            (*_TRAINING, PIPELINE), defines_result=False),
    Setting("plots", "bool", "PNG plots in the run folder (metrics.csv is written either way)", (*_TRAINING, PIPELINE),
            defines_result=False, docs={PIPELINE: "PNG plots per step and accuracy.png; the report embeds them"}),
    Setting("num_workers", "int", _NO_EFFECT + "data lives in memory, augmentation runs on the device", _ALL,
            defines_result=False, compat=True),
    # --- the data ---
    Setting("dataset", "str", "data set: a registered name (mela data info), custom or tasks", _EVERYWHERE),
    Setting("custom_path", "path", "dataset=custom: a folder of class folders or an .npz of images and labels",
            _EVERYWHERE),
    Setting("custom_split", "path", 'dataset=custom: JSON {"train": [...], "val": [...], "test": [...]}', _EVERYWHERE),
    Setting("image_size", "int", "custom: images are resized to this (null: 84); tasks: null keeps a collection's "
            "one size", _EVERYWHERE),
    Setting("tasks_path", "path", "dataset=tasks: a folder TASKS/<task>/<local class>/<images>, or a manifest .csv",
            _EVERYWHERE),
    Setting("tasks_truth", "path", "dataset=tasks: true global labels (default: truth.csv beside the tasks, when "
            "there)", _EVERYWHERE),
    Setting("skip_bad_tasks", "bool", "dataset=tasks: skip bad tasks (counted in the log) instead of stopping at the "
            "first", _EVERYWHERE),
    Setting("tasks_holdout", "float", "dataset=tasks: share of the tasks held out for meta_eval", _EVERYWHERE),
    Setting("tasks_val", "float", "dataset=tasks: share of the other tasks that validates training (picks model.pt)",
            _EVERYWHERE),
    Setting("eval_dataset", "str", "dataset=tasks: also evaluate 1- and 5-shot on this data set's test split",
            ("meta_eval", PIPELINE)),
    # --- the tasks ---
    Setting("sample_shape", "str", "few_shot: the episodic steps train on few-shot tasks (flat is refused)",
            _EPISODIC),
    Setting("no_replacement", "bool", "one fixed pile of tasks, each image in at most one (GFSL); false: "
            "train_db_size random tasks", ("learn_meta_repr", "learn_labeler", "fine_tune")),
    Setting("fixed_db", "bool", "no_replacement=false: task i is always drawn from seed (seed, i), not anew each "
            "epoch", ("learn_meta_repr", "learn_labeler", "fine_tune"), compat=("learn_labeler",),
            docs={"learn_labeler": _NO_EFFECT + "the labelling pile is drawn once, from the seed"}),
    Setting("train_db_size", "int", "tasks per epoch when no_replacement=false", ("learn_meta_repr", "learn_labeler",
            "fine_tune"), docs={"learn_labeler": "tasks in the labelling pile when no_replacement=false"}),
    Setting("n_ways", "int", "classes per training task", _EVERYWHERE, compat=("sup_baseline",), feeds=("n_ways",
            "val_n_ways"), docs={
                "learn_labeler": "classes per labelling task",
                "sup_baseline": _NO_EFFECT + "the oracle trains on image batches; val_n_ways sets its validation tasks",
                "meta_eval": "classes per test task",
                PIPELINE: "classes per task in every step (and the steps' val_n_ways)"}),
    Setting("n_shots", "int", "support images per class of each training task",
            ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", PIPELINE), compat=("sup_baseline",),
            docs={"learn_labeler": "with n_queries: images per class of each labelling task",
                  "sup_baseline": _NO_EFFECT + "the oracle trains on image batches; val_shots sets its validation"}),
    Setting("n_queries", "int", "query images per class of the training and validation tasks", _EVERYWHERE, docs={
        "learn_labeler": "with n_shots: images per class of each labelling task; queries of the validation tasks",
        "sup_baseline": "query images per class of the validation tasks",
        "meta_eval": "query images per class of each test task",
        PIPELINE: "query images per class of every step's tasks (a step's section may set its own)"}),
    Setting("val_n_ways", "int", "classes per validation task (the pipeline sets it to n_ways)", _TRAINING),
    Setting("val_n_shots", "int", "the shot count whose validation picks model.pt (one of val_shots)", _TRAINING),
    Setting("val_shots", "list[int]", "validation shot counts; best_<k>shot.pt is kept for each", _TRAINING),
    Setting("test_db_size", "int", "validation tasks per sub-data set and shot count", (*_ALL, PIPELINE),
            feeds=("meta_eval.test_db_size",), docs={
                "meta_eval": "test tasks per sub-data set and shot count",
                PIPELINE: "meta_eval's test_db_size: test tasks per sub-data set and shot count"}),
    Setting("val_db_size", "int", "the training steps' test_db_size: validation tasks per sub-data set and shot count",
            (PIPELINE,), feeds=tuple(f"{step}.test_db_size" for step in _TRAINING)),
    # --- the model ---
    Setting("model", "str", "backbone architecture (mela models lists them)", ("learn_meta_repr", "fine_tune",
            "sup_baseline", "meta_eval", PIPELINE), feeds=("model", "label_recovery_model", "train_model"), docs={
                "fine_tune": "architecture of the learn_labeler model it fine-tunes (checked)",
                "meta_eval": "checked against the saved model's architecture",
                PIPELINE: "backbone of every step (learn_labeler's label_recovery_model and train_model)"}),
    Setting("model_options", "mapping", "options of the model's factory, e.g. {hidden: 32} or model_options.hidden=32",
            ("learn_meta_repr", "learn_labeler", "sup_baseline", PIPELINE),
            docs={"learn_labeler": "options of train_model's factory, e.g. {hidden: 32} or model_options.hidden=32"}),
    Setting("feat_dim", "int", "follows from the model; a different value is refused", _ALL),
    Setting("label_recovery_model", "str", "architecture of the learn_meta_repr model", ("learn_labeler",)),
    Setting("train_model", "str", "architecture trained on the inferred labels", ("learn_labeler",)),
    Setting("pretrained_model", MODEL_REF, "start from a saved model: false, " + _REF, _ALL, docs={
        "learn_labeler": "initialise train_model from a saved model: false, " + _REF,
        "fine_tune": "the learn_labeler model: " + _REF,
        "meta_eval": "the model to evaluate: " + _REF}),
    Setting("pretrained_labeler", MODEL_REF, "the learn_meta_repr model: " + _REF, ("learn_labeler",)),
    Setting("pretrained_centroids", MODEL_REF, "reuse centroids: a centroids.npz or a learn_labeler run",
            ("learn_labeler",)),
    # --- the meta-learner's loss ---
    Setting("lam", "float", "ridge regularisation of the meta-learner", _ALL, compat=("learn_labeler", "sup_baseline"),
            docs={"learn_labeler": _NO_EFFECT + "no ridge here (the reference validated with C = 1/lam)",
                  "sup_baseline": _NO_EFFECT + "the oracle has no ridge head",
                  "meta_eval": "ridge regularisation of head=ridge"}),
    Setting("normalize_lam", "bool", "scale lam by the number of support images (the reference's option)",
            ("learn_meta_repr", "learn_labeler", "fine_tune", "meta_eval"), compat=("learn_labeler", "meta_eval"),
            docs={"learn_labeler": _NO_EFFECT + "no ridge in this step",
                  "meta_eval": _NO_EFFECT + "head=ridge takes lam as it is"}),
    Setting("extra_reg", "bool", "add the hinge-embedding and W_s-to-W_full terms to the ridge loss", _EPISODIC),
    Setting("hinge_mask", "str", "fixed | reference (reproduces the reference's support/query mask quirk)", _EPISODIC),
    Setting("tasks_per_step", "int", "tasks per optimiser step (the reference uses 1)", _EPISODIC),
    # --- optimisation ---
    Setting("epochs", "int", "training epochs (a rerun may raise it: training resumes at the last epoch)", _TRAINING),
    Setting("batch_size", "int", "images per supervised training batch", ("learn_labeler", "sup_baseline")),
    Setting("SGD", "bool", "true: SGD with momentum; false: AdamW", _TRAINING,
            docs={"fine_tune": "true: SGD with momentum; false: AdamW (what the reference fine-tunes with)"}),
    Setting("learning_rate", "float", "initial learning rate", _TRAINING),
    Setting("lr_decay_epochs", "str", 'epochs "e1,e2,..." at which the learning rate is multiplied by lr_decay_rate',
            _TRAINING),
    Setting("lr_decay_rate", "float", "factor applied to the learning rate at each of lr_decay_epochs", _TRAINING),
    Setting("weight_decay", "float", "weight decay of the optimiser", _TRAINING),
    Setting("momentum", "float", "momentum of SGD", _TRAINING),
    # --- augmentation ---
    Setting("data_aug", "bool", "augment the training images (aug_crop, aug_jitter, hflip)",
            ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline"),
            docs={"learn_labeler": "labelling features from augmented views (as learn_meta_repr's; usually false)"}),
    Setting("rotate_aug", "bool", "rotate each local class by a random multiple of 90 degrees (a new class to learn)",
            ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline"), docs={
                "learn_labeler": "labelling features averaged over 4 rotations of each image (usually false)",
                "sup_baseline": "add each image rotated by 90, 180 and 270 degrees as new classes"}),
    Setting("sup_data_aug", "bool", "augment the images of the training on the inferred labels", ("learn_labeler",)),
    Setting("sup_rotate_aug", "bool", "training on the inferred labels: add 90/180/270-degree rotations as new "
            "classes", ("learn_labeler",)),
    Setting("hflip", "bool", "horizontal flips in data_aug (off for glyphs: mirrored letters are other letters)",
            (*_AUGMENTING, PIPELINE), docs={"learn_labeler": "horizontal flips " + _AUG}),
    Setting("aug_crop", "bool", "data_aug: random crops (padding scales with the image: 3 px at 32, 8 at 84)",
            (*_AUGMENTING, PIPELINE), docs={"learn_labeler": "random crops " + _AUG + ", padding 3 px at 32, 8 at 84"}),
    Setting("aug_pad_mode", "str", "data_aug crops pad by reflect | replicate | zeros (black, the reference)",
            (*_AUGMENTING, PIPELINE), docs={"learn_labeler": "crops pad by reflect | replicate | zeros " + _AUG}),
    Setting("aug_jitter", "float", "data_aug colour jitter strength (the reference: 0.4); 0 = off",
            (*_AUGMENTING, PIPELINE), docs={"learn_labeler": "colour jitter strength " + _AUG + "; 0 = off"}),
    # --- validation and test-time heads ---
    Setting("test_C", "float", "C (inverse regularisation) of the logistic-regression head at validation and test",
            _ALL, docs={"learn_labeler": "C of the validation's logistic regression (the reference: 1/lam here)"}),
    Setting("use_bias", "bool", "the logistic-regression head fits an intercept", _ALL),
    Setting("is_norm", "bool", "L2-normalise the features before the head", _ALL),
    # --- learn_labeler: the clustering and its outputs ---
    Setting("K", "int", "initial centroids of the clustering (well above the classes expected)", ("learn_labeler",)),
    Setting("std_factor", "float", "pruning: drop centroids hit this many sds below the mean count",
            ("learn_labeler",)),
    Setting("labeler", "str", "improved | reference (the reference's clustering, exactly)", ("learn_labeler",)),
    Setting("spawn_factor", "float", "improved: a key this many chi-square sds beyond its class's distance starts a "
            "centroid", ("learn_labeler",)),
    Setting("merge_factor", "float", "improved: merge clusters whose means differ by at most this many noise sds",
            ("learn_labeler",)),
    Setting("merge_risk", "float", "improved: ...and that two different classes come that close at most this often",
            ("learn_labeler",)),
    Setting("max_passes", "int", "clustering passes at most", ("learn_labeler",)),
    Setting("count_check", "bool", "improved: cluster again with K*0.75 and warn when the count follows K, not the "
            "data", ("learn_labeler",)),
    Setting("global_labels", "path", "an edited global_labels.csv: train on its labels instead of clustering",
            ("learn_labeler",)),
    Setting("global_labels_allow_shared", "bool", "global_labels: a task may give two of its local classes one "
            "global class", ("learn_labeler",)),
    Setting("gallery", "bool", "gallery.html: each global class as thumbnails, most doubtful first",
            ("learn_labeler",), defines_result=False),
    Setting("gallery_top", "int", "doubtful classes in the gallery's review view (and in mela report)",
            ("learn_labeler",), defines_result=False),
    # --- meta_eval ---
    Setting("shots", "list[int]", "shot counts evaluated, one row each", ("meta_eval",)),
    Setting("split", "str", "the split evaluated: test | val | train", ("meta_eval",)),
    Setting("head", "str", "logistic (the reference) | ridge | prototype", ("meta_eval",)),
    Setting("from_step", "str", "where `latest` looks: learn_meta_repr | learn_labeler | fine_tune | sup_baseline "
            "(default: any)", ("meta_eval",)),
    # --- the pipeline's per-step sections ---
    *(Setting(step, "mapping", f"{step}'s own settings in the pipeline (any key of its config)", (PIPELINE,),
              feeds=()) for step in STEP_NAMES),
)}


def setting(name: str) -> Setting:
    return SETTINGS[name]


def settings_of(config: str) -> list[Setting]:
    """The settings config ``config`` (a step name or a pipeline config's name) accepts, in the registry's order."""
    kind = config_kind(config)
    return [s for s in SETTINGS.values() if kind in s.steps]


def free_keys(config: str) -> frozenset[str]:
    """Keys of ``config`` a rerun may change: they do not define the result there (compat keys included)."""
    return frozenset(s.name for s in settings_of(config) if not s.defines(config))


def compat_keys(config: str) -> frozenset[str]:
    """Keys ``config`` accepts only for the original scripts' command lines."""
    return frozenset(s.name for s in settings_of(config) if s.is_compat(config))


def never_defining() -> frozenset[str]:
    """Keys that define no step's result (where they exist, anywhere)."""
    return frozenset(s.name for s in SETTINGS.values() if not s.defines_result or s.compat is True)


def names_of_type(kind: str) -> frozenset[str]:
    return frozenset(s.name for s in SETTINGS.values() if s.type == kind)


def pipeline_feeds(step: str, step_keys: Iterable[str]) -> list[tuple[str, str]]:
    """(pipeline key, step key) pairs: what the pipeline hands step ``step``, whose config has ``step_keys``.

    A compat key is not handed on (the step does not use it).
    """
    keys = set(step_keys)
    pairs = []
    for s in settings_of(PIPELINE):
        for target in (s.name,) if s.feeds is None else s.feeds:
            only, _, key = target.rpartition(".")
            if (not only or only == step) and key in keys and not setting(key).is_compat(step):
                pairs.append((s.name, key))
    return pairs


def _value_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def settings_help(config: str, defaults: Mapping) -> str:
    """``mela <step> --help``: every setting of ``config`` with its default (``defaults``: the config's) and doc;
    the keys kept for the original scripts last."""
    rows, compat = [], []
    for key, value in defaults.items():
        s = SETTINGS.get(key)
        doc = s.doc_for(config) if s else ""
        (compat if s is not None and s.is_compat(config) else rows).append((key, _value_text(value), doc))
    width = max((len(f"{k}={v}") for k, v, _ in rows + compat if len(f"{k}={v}") <= 34), default=0)
    lines = [f"  {f'{k}={v}':<{width}}  {doc}".rstrip() for k, v, doc in rows]
    if compat:
        lines += ["", "accepted for the original scripts' command lines (no effect here):"]
        lines += [f"  {f'{k}={v}':<{width}}  {SETTINGS[k].compat_reason(config)}".rstrip() for k, v, _ in compat]
    return "\n".join(lines)
