"""Few-shot heads against independent solvers: scikit-learn logistic regression, numpy ridge, hand-made prototypes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from mela.errors import MelaError
from mela.methods.heads import LogisticRegressionHead, PrototypeHead, RidgeHead, make_head


def _tasks(seed: int, n_tasks: int, n_ways: int, n_shots: int, n_queries: int, d: int):
    """Class-structured random features, L2-normalised like the evaluator's."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_tasks, n_ways, 1, d))
    support = (means + 0.8 * rng.normal(size=(n_tasks, n_ways, n_shots, d))).reshape(n_tasks, -1, d)
    query = (means + 0.8 * rng.normal(size=(n_tasks, n_ways, n_queries, d))).reshape(n_tasks, -1, d)
    support /= np.linalg.norm(support, axis=-1, keepdims=True)
    query /= np.linalg.norm(query, axis=-1, keepdims=True)
    labels = np.tile(np.repeat(np.arange(n_ways), n_shots), (n_tasks, 1))
    return support, labels, query


SHAPES = [(1, 16), (1, 3), (5, 40), (5, 10)]  # (n_shots, d): 1- and 5-shot 5-way, d above and below n_support


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("fit_intercept", [True, False], ids=["bias", "no_bias"])
def test_logistic_head_probabilities_match_sklearn_lbfgs_for_1_and_5_shot_tasks_with_d_above_and_below_n(
        C: float, fit_intercept: bool) -> None:
    n_ways, n_tasks = 5, 2
    for n_shots, d in SHAPES:
        support, labels, query = _tasks(n_shots * 1000 + d, n_tasks, n_ways, n_shots, 6, d)
        head = LogisticRegressionHead(C=C, fit_intercept=fit_intercept).fit(
            torch.from_numpy(support).float(), torch.from_numpy(labels), n_ways)
        probs = head.predict_proba(torch.from_numpy(query).float()).numpy()
        predicted = head.predict(torch.from_numpy(query).float()).numpy()
        for t in range(n_tasks):
            # sklearn sees exactly the float32 values the head was given.
            x_support = support[t].astype(np.float32).astype(np.float64)
            x_query = query[t].astype(np.float32).astype(np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                reference = LogisticRegression(C=C, fit_intercept=fit_intercept, tol=1e-10, max_iter=20000,
                                               solver="lbfgs").fit(x_support, labels[t])
            expected = reference.predict_proba(x_query)
            assert np.abs(probs[t] - expected).max() < 1e-4, (n_shots, d, t)
            np.testing.assert_array_equal(predicted[t], expected.argmax(-1))


def test_logistic_head_rejects_a_non_positive_c_with_a_mela_error() -> None:
    with pytest.raises(MelaError, match="test_C"):
        LogisticRegressionHead(C=0.0)


def test_ridge_head_weights_and_predictions_equal_numpy_ridge_with_intercept() -> None:
    n_ways, lam = 4, 0.05
    support, labels, query = _tasks(3, 2, n_ways, 3, 5, 6)
    head = RidgeHead(lam=lam).fit(torch.from_numpy(support), torch.from_numpy(labels), n_ways)
    predicted = head.predict(torch.from_numpy(query)).numpy()
    for t in range(2):
        xs = np.hstack([support[t], np.ones((len(support[t]), 1))])
        ys = np.eye(n_ways)[labels[t]]
        w = np.linalg.solve(xs.T @ xs + lam * np.eye(xs.shape[1]), xs.T @ ys)
        np.testing.assert_allclose(head.weights[t].numpy(), w, rtol=1e-6, atol=1e-9)
        scores = np.hstack([query[t], np.ones((len(query[t]), 1))]) @ w
        np.testing.assert_array_equal(predicted[t], scores.argmax(-1))


def test_prototype_head_predicts_the_nearest_hand_computed_class_mean() -> None:
    # Class 0 support: (0,0), (2,0) -> mean (1,0); class 1 support: (0,4), (0,6) -> mean (0,5).
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    head = PrototypeHead().fit(support, labels, 2)
    np.testing.assert_allclose(head.prototypes[0].numpy(), [[1.0, 0.0], [0.0, 5.0]])
    # (1,2): d0 = 2, d1 = sqrt(1+9) = 3.16 -> 0.   (0,3.2): d0 = sqrt(1+10.24) = 3.35, d1 = 1.8 -> 1.
    # (3,2.9): d0 = sqrt(4+8.41) = 3.52, d1 = sqrt(9+4.41) = 3.66 -> 0.   (-1,5): d0 = 5.39, d1 = 1 -> 1.
    query = torch.tensor([[[1.0, 2.0], [0.0, 3.2], [3.0, 2.9], [-1.0, 5.0]]])
    np.testing.assert_array_equal(head.predict(query).numpy(), [[0, 1, 0, 1]])


def test_prototype_head_handles_labels_that_are_not_class_major() -> None:
    support = torch.tensor([[[0.0], [10.0], [2.0], [12.0]]])
    labels = torch.tensor([[0, 1, 0, 1]])
    head = PrototypeHead().fit(support, labels, 2)
    np.testing.assert_allclose(head.prototypes[0].numpy(), [[1.0], [11.0]])
    np.testing.assert_array_equal(head.predict(torch.tensor([[[5.9], [6.1]]])).numpy(), [[0, 1]])


def test_make_head_builds_each_named_head_with_its_settings() -> None:
    logistic = make_head("logistic", C=3.0, use_bias=False)
    assert isinstance(logistic, LogisticRegressionHead)
    assert (logistic.C, logistic.fit_intercept) == (3.0, False)
    ridge = make_head("ridge", lam=0.2)
    assert isinstance(ridge, RidgeHead) and ridge.lam == 0.2
    assert isinstance(make_head("prototype"), PrototypeHead)


def test_make_head_with_an_unknown_name_raises_a_mela_error_listing_the_valid_names() -> None:
    with pytest.raises(MelaError) as info:
        make_head("svm")
    message = str(info.value)
    assert "svm" in message
    for name in ("logistic", "prototype", "ridge"):
        assert name in message


@pytest.mark.parametrize("d", [3, 24])
def test_a_balanced_logistic_head_matches_sklearn_class_weight_balanced_on_unequal_supports(d: int) -> None:
    rng = np.random.default_rng(d)
    counts = [1, 4, 2, 5]  # a real labelling job: classes of unequal sizes
    labels = np.repeat(np.arange(4), counts)
    means = rng.normal(size=(4, d))
    support = means[labels] + 0.9 * rng.normal(size=(len(labels), d))
    query = means[np.repeat(np.arange(4), 3)] + 0.9 * rng.normal(size=(12, d))
    head = LogisticRegressionHead(C=1.0, balanced=True).fit(torch.from_numpy(support)[None],
                                                            torch.from_numpy(labels)[None], 4)
    probs = head.predict_proba(torch.from_numpy(query)[None])[0].numpy()
    reference = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=20000).fit(support, labels)
    assert np.abs(probs - reference.predict_proba(query)).max() < 1e-4
    # Unweighted, the intercept learns the support's class sizes: the probabilities differ.
    plain = LogisticRegressionHead(C=1.0).fit(torch.from_numpy(support)[None], torch.from_numpy(labels)[None], 4)
    assert np.abs(plain.predict_proba(torch.from_numpy(query)[None])[0].numpy() - probs).max() > 1e-3


def test_balancing_changes_nothing_when_every_class_has_as_many_support_images() -> None:
    support, labels, query = _tasks(7, 3, 5, 2, 4, 10)
    args = (torch.from_numpy(support), torch.from_numpy(labels), 5)
    balanced = LogisticRegressionHead(balanced=True).fit(*args).predict_proba(torch.from_numpy(query))
    plain = LogisticRegressionHead().fit(*args).predict_proba(torch.from_numpy(query))
    torch.testing.assert_close(balanced, plain, rtol=0, atol=1e-12)


def test_prototype_probabilities_are_the_softmax_of_minus_squared_distances_to_class_means() -> None:
    support, labels, query = _tasks(11, 2, 4, 3, 5, 6)
    head = PrototypeHead().fit(torch.from_numpy(support), torch.from_numpy(labels), 4)
    probs = head.predict_proba(torch.from_numpy(query)).numpy()
    means = support.reshape(2, 4, 3, 6).mean(2)
    squared = ((query[:, :, None, :] - means[:, None, :, :]) ** 2).sum(-1)
    expected = np.exp(-squared) / np.exp(-squared).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
    assert np.array_equal(probs.argmax(-1), head.predict(torch.from_numpy(query)).numpy())


def test_ridge_scores_are_non_negative_sum_to_one_and_peak_at_the_prediction() -> None:
    support, labels, query = _tasks(12, 3, 5, 2, 6, 8)
    head = RidgeHead(lam=0.1).fit(torch.from_numpy(support), torch.from_numpy(labels), 5)
    probs = head.predict_proba(torch.from_numpy(query)).numpy()
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert np.array_equal(probs.argmax(-1), head.predict(torch.from_numpy(query)).numpy())
