"""A trained model in any of its three forms, resolved and loaded with the preprocessing it was trained with.

MODEL may be a model file (``model.pt`` of any step), an exported folder (``model.safetensors`` +
``mela_model.json``, see :mod:`mela.inference.export`), a run name or folder, or a pipeline run, whose
``mela`` model (the learn_labeler run of the same name) is taken. Model files written before 0.3.0 do not
record their preprocessing: the statistics of their data set are used when it is known, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mela.data.preprocessing import Preprocessing
from mela.device import pick_device
from mela.engine.checkpoint import EXPORT_JSON, EXPORT_WEIGHTS, load_feature_model
from mela.errors import MelaError
from mela.models.feature_model import FeatureModel
from mela.runs.store import MODEL_FILE
from mela.steps.registry import model_steps
from mela.workspace import data_dir, saves_dir, workspace_root

# Where a run name is looked for, in this order: a pipeline run means its `mela` model; then the steps' runs, the
# most refined model first (the step registry's order, as meta_eval's).
RUN_STEPS = ("pipeline", *model_steps(refined_first=True))
PIPELINE_MODEL_STEP = "learn_labeler"


@dataclass
class TrainedModel:
    """A feature model ready for raw images: the network, its input ``preprocessing`` and what is known of it.

    ``info`` holds the model file's metadata (step, dataset, dataset_identity, epoch, val_acc, ...);
    ``source`` is the file it came from; ``notes`` what the user should hear once (e.g. which model of a
    pipeline was taken, or that an old file's preprocessing was inferred).
    """

    model: FeatureModel
    preprocessing: Preprocessing
    info: dict
    source: Path
    notes: list[str] = field(default_factory=list)


def resolve_model(ref: str | Path, workspace: str | None = None) -> tuple[Path, list[str]]:
    """The file (``model.pt``) or export folder that ``ref`` names, and notes on how it was found."""
    path = Path(str(ref)).expanduser()
    if path.is_file():
        if path.name in (EXPORT_JSON, EXPORT_WEIGHTS):
            return path.parent, []
        return path, []
    if path.is_dir():
        return _in_folder(path)
    saves = saves_dir(workspace_root(workspace))
    step, _, name = str(ref).rpartition("/")
    for candidate in ((step,) if step in RUN_STEPS else RUN_STEPS):
        folder = saves / candidate / (name if step in RUN_STEPS else str(ref))
        if folder.is_dir():
            return _in_folder(folder)
    raise MelaError(f"model '{ref}' is not a model file, an exported model folder, a run folder or a run name under "
                    f"{saves}; give a model.pt, a folder written by `mela export`, or a run name (STEP/NAME picks a "
                    "step's run)")


def _in_folder(folder: Path) -> tuple[Path, list[str]]:
    if (folder / EXPORT_JSON).is_file():
        return folder, []
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE, []
    if folder.parent.name == "pipeline":
        model = folder.parent.parent / PIPELINE_MODEL_STEP / folder.name / MODEL_FILE
        if not model.is_file():
            raise MelaError(f"pipeline run {folder.name} has no finished learn_labeler model ({model}); rerun the "
                            f"pipeline with run_name={folder.name}")
        return model, [f"pipeline run {folder.name}: using its mela model ({model})"]
    raise MelaError(f"{folder} holds neither {EXPORT_JSON} (an exported model) nor {MODEL_FILE} (a finished run); "
                    "point to a model file, an exported folder or a finished run")


def load_trained_model(ref: str | Path | FeatureModel | TrainedModel, device: str | torch.device | None = None,
                       workspace: str | None = None, require_preprocessing: bool = True) -> TrainedModel:
    """Load ``ref`` (any form above, or an in-memory model) on ``device`` with its preprocessing.

    A pre-0.3.0 file whose preprocessing cannot be inferred is refused, or, without
    ``require_preprocessing``, loaded with ``preprocessing`` None (for code that feeds it prepared batches).
    """
    target = device if isinstance(device, torch.device) else pick_device(str(device or "auto"))
    if isinstance(ref, TrainedModel):
        return TrainedModel(ref.model.to(target), ref.preprocessing, ref.info, ref.source, list(ref.notes))
    if isinstance(ref, FeatureModel):
        if not isinstance(ref.preprocessing, Preprocessing):
            raise MelaError("this model records no preprocessing (a fresh model, or one built by hand): load a "
                            "trained one with mela.load_model, or set model.preprocessing = mela.Preprocessing(...)")
        return TrainedModel(ref.to(target), ref.preprocessing, {}, Path("<memory>"))
    path, notes = resolve_model(ref, workspace)
    model, payload = load_feature_model(path, target)
    info = {k: v for k, v in payload.items() if k not in ("spec", "architecture")}
    if isinstance(model.preprocessing, Preprocessing):
        return TrainedModel(model, model.preprocessing, info, path, notes)
    try:
        preprocessing, note = legacy_preprocessing(model, info, path, workspace)
    except MelaError:
        if require_preprocessing:
            raise
        return TrainedModel(model, None, info, path, notes)  # type: ignore[arg-type]
    model.preprocessing = preprocessing
    return TrainedModel(model, preprocessing, info, path, [*notes, note])


def legacy_preprocessing(model: FeatureModel, info: dict, path: Path,
                         workspace: str | None) -> tuple[Preprocessing, str]:
    """The preprocessing of a model file from before 0.3.0: its data set's statistics and image size."""
    from mela.data.registry import get_dataset_spec, load_split

    name = str(info.get("dataset", ""))
    try:
        spec = get_dataset_spec(name)
    except MelaError:
        spec = None
    if spec is None or spec.fingerprint:  # unknown, or built from the user's files (custom, tasks)
        raise MelaError(f"{path} predates recorded preprocessing (mela < 0.3.0) and its data set '{name or '?'}' is "
                        "not a registered one whose statistics are known; retrain it with this mela, or load it "
                        "with mela.load_model and set model.preprocessing = mela.Preprocessing(...)")
    try:
        shape = load_split(name, "train", data_dir(workspace_root(workspace))).image_shape
    except MelaError as exc:
        raise MelaError(f"{path} predates recorded preprocessing (mela < 0.3.0); reading its image size needs data "
                        f"set {name}, which is not here ({exc})") from None
    channels = int(model.spec.backbone_kwargs.get("in_channels", shape[-1]))
    preprocessing = Preprocessing.of_training((shape[0], shape[1], channels), spec.mean, spec.std)
    return preprocessing, (f"note: {path} predates recorded preprocessing; using data set {name}'s statistics "
                           f"({shape[0]}x{shape[1]}, {channels} channel{'s' if channels > 1 else ''}, mean "
                           f"{_rounded(spec.mean)}, std {_rounded(spec.std)})")


def _rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
