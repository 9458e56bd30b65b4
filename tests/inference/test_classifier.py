"""FewShotClassifier and embed: scikit-learn conventions, features equal to the training loader's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

import mela
from mela.errors import MelaError
from mela.methods.evaluator import extract_features

from .conftest import write_png


@pytest.fixture(scope="module")
def model(trained_model_file):
    return mela.load_model(trained_model_file, "cpu")


@pytest.fixture(scope="module")
def test_split(synthetic_dataset):
    return mela.open_dataset(synthetic_dataset).split("test")


def _pick(split, classes, per_class, offset=0):
    rows = np.concatenate([np.flatnonzero(split.labels == c)[offset:offset + per_class] for c in classes])
    return rows


def test_features_from_image_files_equal_the_training_loaders_features(model, test_split, tmp_path):
    rows = np.arange(0, len(test_split.images), 7)
    paths = [write_png(tmp_path / f"{i}.png", test_split.images[i]) for i in rows]
    from_files = mela.embed(model, paths)
    loader = extract_features(model, test_split.images[rows], (0.35,), (0.4,), torch.device("cpu")).numpy()
    assert from_files.shape == (len(rows), model.feat_dim) and from_files.dtype == np.float32
    np.testing.assert_allclose(from_files, loader, rtol=0, atol=1e-5)


def test_the_logistic_head_matches_scikit_learn_on_the_same_normalised_features(model, test_split):
    support, query = _pick(test_split, range(4), 3), _pick(test_split, range(4), 4, offset=3)
    names = np.array(["cat", "dog", "emu", "fox"])[test_split.labels[support]]
    clf = mela.FewShotClassifier(model)
    assert clf.fit(test_split.images[support], names) is clf
    assert list(clf.classes_) == ["cat", "dog", "emu", "fox"] and clf.n_features_in_ == model.feat_dim

    def normalised(rows):
        features = clf.transform(test_split.images[rows]).astype(np.float64)
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(normalised(support), names)
    probs = clf.predict_proba(test_split.images[query])
    assert np.abs(probs - reference.predict_proba(normalised(query))).max() < 1e-4
    assert list(clf.predict(test_split.images[query])) == list(reference.predict(normalised(query)))
    assert clf.score(test_split.images[query], np.array(["cat", "dog", "emu", "fox"])[test_split.labels[query]]) > 0.25


@pytest.mark.parametrize("head", ["ridge", "prototype"])
def test_every_head_predicts_the_argmax_of_its_probabilities(model, test_split, head):
    support, query = _pick(test_split, range(3), 2), _pick(test_split, range(3), 5, offset=2)
    clf = mela.FewShotClassifier(model, head=head).fit(test_split.images[support], test_split.labels[support])
    probs = clf.predict_proba(test_split.images[query])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert np.array_equal(clf.classes_[probs.argmax(1)], clf.predict(test_split.images[query]))


def test_paths_pil_images_and_arrays_are_the_same_images(model, test_split, tmp_path):
    rows = _pick(test_split, range(2), 2)
    paths = [write_png(tmp_path / f"{i}.png", test_split.images[i]) for i in rows]
    pil = [Image.open(p) for p in paths]
    arrays = list(test_split.images[rows])
    a, b, c = (mela.embed(model, images) for images in (paths, pil, arrays))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_colour_and_oversized_images_are_converted_for_a_grey_model_with_one_warning(model, test_split):
    rows = _pick(test_split, range(2), 3)
    colour = [np.repeat(np.asarray(Image.fromarray(test_split.images[i][..., 0]).resize((48, 48))), 3)
              .reshape(48, 48, 3) for i in rows]
    with pytest.warns(UserWarning) as caught:
        features = mela.embed(model, colour)
    assert features.shape == (len(rows), model.feat_dim)
    messages = [str(w.message) for w in caught]
    assert sum("converted to grey" in m for m in messages) == 1 and sum("resized to 16x16" in m for m in messages) == 1


def test_misuse_is_one_line(model, test_split):
    with pytest.raises(MelaError, match="not fitted yet"):
        mela.FewShotClassifier(model).predict(test_split.images[:2])
    with pytest.raises(MelaError, match="at least two support classes, got 1"):
        mela.FewShotClassifier(model).fit(test_split.images[:3], ["a", "a", "a"])
    with pytest.raises(MelaError, match="one label per support image"):
        mela.FewShotClassifier(model).fit(test_split.images[:3], ["a", "b"])
    with pytest.raises(MelaError, match="unknown few-shot head 'svm'; valid names: logistic, prototype, ridge"):
        mela.FewShotClassifier(model, head="svm").fit(test_split.images[:2], ["a", "b"])
    with pytest.raises(MelaError, match="records no preprocessing"):
        mela.embed(mela.create_model("convnet4", in_channels=1), test_split.images[:2])


def test_an_array_is_a_batch_of_grey_or_colour_images_or_one_image(model, test_split):
    batch = test_split.images[:4]  # (4, 16, 16, 1)
    expected = mela.embed(model, batch)
    assert np.array_equal(mela.embed(model, batch[..., 0]), expected)  # (N, H, W) grey
    # One image is a batch of one: the CPU kernels may round differently at another batch size.
    np.testing.assert_allclose(mela.embed(model, batch[0]), expected[:1], rtol=0, atol=1e-5)  # one (H, W, 1)
    np.testing.assert_allclose(mela.embed(model, batch[0, ..., 0]), expected[:1], rtol=0, atol=1e-5)  # (H, W)
