"""Features and few-shot predictions from a trained model, in scikit-learn's manner.

``embed(model, images)`` gives the features a step would compute for those images; ``FewShotClassifier``
fits a few-shot head (logistic regression as meta_eval, ridge, or prototypes) on a support set of any
labels and predicts queries. Features go through the same path as meta_eval's (eval mode, the model's own
normalisation, L2-normalised in float64 before the head), so on the same images the predictions are
meta_eval's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mela.data.preprocessing import ImageLike, OnceNote
from mela.errors import MelaError
from mela.inference.model_io import TrainedModel, load_trained_model
from mela.methods.evaluator import extract_features
from mela.methods.heads import HEAD_NAMES, FewShotHead, make_head
from mela.reporting.progress import progress_bar

Note = Callable[[str], None]


def _warn(message: str) -> None:
    """A UserWarning attributed to the user's line (the first frame outside mela), not to mela's internals."""
    import sys
    import warnings

    frame, level = sys._getframe(1), 2
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("mela."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


@dataclass(frozen=True)
class Decoded:
    """Images turned into the model's pixels: ``pixels`` (n, H, W, C) uint8 of the readable ones, ``kept`` their
    positions in the input, ``bad`` (position, reason) of those skipped."""

    pixels: np.ndarray
    kept: np.ndarray
    bad: list[tuple[int, str]]


def decode(trained: TrainedModel, images: Sequence[ImageLike] | np.ndarray, note: Note | None = None,
           skip_bad: bool = False, progress: bool = False) -> Decoded:
    """The model's pixels for ``images``; an unreadable one stops with its name, or is skipped with ``skip_bad``."""
    if isinstance(images, np.ndarray):  # a batch (N, H, W, C) or (N, H, W), or one (H, W, C) image
        one_image = images.ndim == 3 and images.shape[-1] in (1, 3) or images.ndim == 2
        images = [images] if one_image else list(images)
    tell = OnceNote(note)
    prep = trained.preprocessing
    pixels = np.empty((len(images), *prep.image_size, prep.channels), dtype=np.uint8)
    kept, bad = [], []
    for i, image in progress_bar(enumerate(images), progress, "reading images", total=len(images), unit="img"):
        try:
            pixels[len(kept)] = prep.pixel(image, i, tell)
        except MelaError as exc:
            if not skip_bad:
                raise
            bad.append((i, str(exc)))
            continue
        kept.append(i)
    return Decoded(pixels[:len(kept)], np.asarray(kept, dtype=np.int64), bad)


def features_of(trained: TrainedModel, pixels: np.ndarray, batch_size: int = 256, progress: bool = False
                ) -> torch.Tensor:
    """(N, d) float32 CPU features of (N, H, W, C) pixels, batch by batch (eval mode, fp32)."""
    device = next(trained.model.parameters()).device
    starts = range(0, len(pixels), batch_size)
    out = [extract_features(trained.model, pixels[s:s + batch_size], trained.preprocessing.mean,
                            trained.preprocessing.std, device, batch_size)
           for s in progress_bar(starts, progress, "features", total=len(starts), unit="batch")]
    return torch.cat(out) if out else torch.zeros(0, trained.model.feat_dim)


def embed(model: object, images: Sequence[ImageLike] | np.ndarray, *, batch_size: int = 256,
          device: str | torch.device | None = None, note: Note | None = _warn) -> np.ndarray:
    """(N, d) float32 features of ``images`` (paths, PIL images or uint8 arrays, any size and colour: converted
    as the model was trained, with one note per kind of conversion). ``model``: anything
    :func:`mela.load_model` returns or a model reference (file, exported folder, run name)."""
    trained = load_trained_model(model, device)
    decoded = decode(trained, images, note)
    return features_of(trained, decoded.pixels, batch_size).numpy()


def prepare_features(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Features as the heads take them in meta_eval: float64, L2-normalised."""
    out = features.double()
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def fit_head(name: str, support: torch.Tensor, labels: np.ndarray, n_classes: int, C: float = 1.0,
             lam: float = 1e-3) -> FewShotHead:
    """Fit head ``name`` on (S, d) prepared support features with labels in 0..n_classes-1.

    The logistic head weighs classes equally when their support sizes differ (meta_eval's rule for task
    collections); with equal sizes the weights are all 1 and it is exactly meta_eval's head.
    """
    head = make_head(name, C=C, lam=lam, balanced=True)
    return head.fit(support[None], torch.as_tensor(labels, dtype=torch.int64)[None], n_classes)


class FewShotClassifier:
    """A few-shot classifier on a trained mela model, in scikit-learn's conventions.

        clf = mela.FewShotClassifier(mela.load_model("model.pt")).fit(support_images, support_labels)
        clf.predict(query_images); clf.predict_proba(query_images); clf.classes_

    Images are uint8 arrays, PIL images or paths; labels anything sortable (names, ints). ``head`` is
    ``logistic`` (meta_eval's: L2 logistic regression, ``C``), ``ridge`` (``lam``) or ``prototype``.
    """

    def __init__(self, model: object, head: str = "logistic", *, C: float = 1.0, lam: float = 1e-3,
                 normalize: bool = True, batch_size: int = 256, device: str | torch.device | None = None) -> None:
        self.model, self.head, self.C, self.lam = model, head, C, lam
        self.normalize, self.batch_size, self.device = normalize, batch_size, device

    def _trained(self) -> TrainedModel:
        if getattr(self, "_loaded", None) is None:
            if self.head not in HEAD_NAMES:
                raise MelaError(f"unknown few-shot head '{self.head}'; valid names: {', '.join(HEAD_NAMES)}")
            self._loaded = load_trained_model(self.model, self.device)
        return self._loaded

    def transform(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """The model's (N, d) float32 features of ``images`` (before the head's normalisation)."""
        trained = self._trained()
        return features_of(trained, decode(trained, images, _warn).pixels, self.batch_size).numpy()

    def fit(self, images: Sequence[ImageLike] | np.ndarray, labels: Sequence[object] | np.ndarray
            ) -> FewShotClassifier:
        """Fit the head on the support set; sets ``classes_`` (sorted) and ``n_features_in_``."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise MelaError(f"fit needs one label per support image: {len(images)} images, labels of shape "
                            f"{labels.shape}")
        classes, encoded = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise MelaError(f"a few-shot task needs at least two support classes, got {len(classes)}; "
                            "add images of another class")
        features = prepare_features(torch.from_numpy(self.transform(images)), self.normalize)
        self.head_ = fit_head(self.head, features, encoded, len(classes), self.C, self.lam)
        self.classes_, self.n_features_in_ = classes, int(features.shape[1])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise MelaError("this FewShotClassifier is not fitted yet: call fit(support_images, support_labels)")

    def predict_proba(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities in the order of ``classes_``."""
        self._check_fitted()
        features = prepare_features(torch.from_numpy(self.transform(images)), self.normalize)
        return self.head_.predict_proba(features[None])[0].cpu().numpy()

    def predict(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """The predicted class of each image (values of ``classes_``)."""
        self._check_fitted()
        features = prepare_features(torch.from_numpy(self.transform(images)), self.normalize)
        return self.classes_[self.head_.predict(features[None])[0].cpu().numpy()]

    def score(self, images: Sequence[ImageLike] | np.ndarray, labels: Sequence[object] | np.ndarray) -> float:
        """Mean accuracy on ``images`` with true ``labels``."""
        return float(np.mean(self.predict(images) == np.asarray(labels)))
