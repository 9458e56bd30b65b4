"""Ridge meta-learner math: closed forms, intercept, hinge term and masks, the episodic loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mela.errors import MelaError
from mela.methods.ridge import (
    RidgeSolveError,
    add_intercept,
    hinge_embedding_loss,
    reference_hinge_mask,
    ridge_dual,
    ridge_fit,
    ridge_primal,
    same_class_mask,
    task_ridge_loss,
)


def numpy_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """The textbook closed form W = (XᵀX + λI)⁻¹ XᵀY, for one task."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def f32(a: np.ndarray) -> torch.Tensor:
    """Features as the training loop produces them (float32)."""
    return torch.from_numpy(a).float()


def onehot_np(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


@pytest.mark.parametrize(("n", "d"), [(5, 12), (25, 6)], ids=["n_below_d", "n_above_d"])
@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_dual_primal_and_fit_ridge_agree_with_numpy_closed_form_per_task_and_batched(n: int, d: int,
                                                                                    lam: float) -> None:
    rng = np.random.default_rng(n * 100 + d)
    x = rng.normal(size=(3, n, d))
    y = rng.normal(size=(3, n, 4))
    expected = np.stack([numpy_ridge(x[b], y[b], lam) for b in range(3)])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for solver in (ridge_dual, ridge_primal, ridge_fit):
        batched = solver(xt, yt, lam).numpy()
        np.testing.assert_allclose(batched, expected, rtol=1e-7, atol=1e-8)
        single = solver(xt[1], yt[1], lam).numpy()
        np.testing.assert_allclose(single, expected[1], rtol=1e-7, atol=1e-8)


def test_dual_ridge_is_the_kernel_form_x_transpose_times_inverse_gram_times_y() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 9)), rng.normal(size=(4, 3))
    expected = x.T @ np.linalg.inv(0.01 * np.eye(4) + x @ x.T) @ y
    np.testing.assert_allclose(ridge_dual(torch.from_numpy(x), torch.from_numpy(y), 0.01).numpy(), expected, rtol=1e-8)


def test_add_intercept_appends_a_column_of_ones_for_single_and_batched_inputs() -> None:
    x = torch.tensor([[1.5, -2.0], [0.0, 3.0]])
    np.testing.assert_array_equal(add_intercept(x).numpy(), [[1.5, -2.0, 1.0], [0.0, 3.0, 1.0]])
    batched = add_intercept(torch.zeros(2, 3, 4, dtype=torch.float64))
    assert batched.shape == (2, 3, 5) and batched.dtype == torch.float64
    np.testing.assert_array_equal(batched[..., -1].numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(batched[..., :4].numpy(), np.zeros((2, 3, 4)))


def test_hinge_loss_on_hand_worked_far_points_is_two_ninths() -> None:
    # d(0,1) = 1, d(0,2) = 5, d(1,2) = sqrt(2.4² + 3.2²) = 4.
    # Same-class pairs: three diagonal pairs (0) + (0,1) and (1,0) (1 each) = 2.
    # Different-class pairs: max(0, 1-5) * 2 + max(0, 1-4) * 2 = 0.  Mean over 9 pairs = 2/9.
    feats = torch.tensor([[0.0, 0.0], [0.6, 0.8], [3.0, 4.0]], dtype=torch.float64)
    same = same_class_mask(torch.tensor([0, 0, 1]))
    assert hinge_embedding_loss(feats, same).item() == pytest.approx(2.0 / 9.0, abs=1e-12)


def test_hinge_loss_on_hand_worked_close_points_counts_the_margin_violations() -> None:
    # d(0,1) = 1, d(0,2) = 0.5, d(1,2) = 0.5; labels [0, 0, 1].
    # Same: 1 + 1 (pair (0,1) both ways); different: (1 - 0.5) * 4 = 2.  Mean = 4/9.
    feats = torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.3, 0.4]], dtype=torch.float64)
    same = same_class_mask(torch.tensor([0, 0, 1]))
    assert hinge_embedding_loss(feats, same).item() == pytest.approx(4.0 / 9.0, abs=1e-12)
    # With margin 2: different pairs contribute (2 - 0.5) * 4 = 6, total 8 / 9.
    assert hinge_embedding_loss(feats, same, margin=2.0).item() == pytest.approx(8.0 / 9.0, abs=1e-12)


def test_reference_mask_marks_same_class_support_query_pairs_different_while_fixed_mask_marks_them_same() -> None:
    support_labels, query_labels = torch.tensor([0, 1]), torch.tensor([0, 1])
    t, f = True, False
    expected_reference = np.array([[t, f, f, f], [f, t, f, f], [f, f, t, f], [f, f, f, t]])
    expected_fixed = np.array([[t, f, t, f], [f, t, f, t], [t, f, t, f], [f, t, f, t]])
    np.testing.assert_array_equal(reference_hinge_mask(support_labels, query_labels).numpy(), expected_reference)
    np.testing.assert_array_equal(same_class_mask(torch.cat([support_labels, query_labels])).numpy(), expected_fixed)
    batched = reference_hinge_mask(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1], [0, 1]]))
    assert batched.shape == (2, 4, 4)
    np.testing.assert_array_equal(batched[0].numpy(), expected_reference)
    # Task 2: support [1, 0], query [0, 1]: each block is still the identity and no cross pair is marked.
    np.testing.assert_array_equal(batched[1].numpy(), expected_reference)


def _random_task_batch(seed: int, n_tasks: int = 2, n_ways: int = 3, shots: int = 2, queries: int = 3, d: int = 7):
    rng = np.random.default_rng(seed)
    support = rng.normal(size=(n_tasks, n_ways * shots, d))
    query = rng.normal(size=(n_tasks, n_ways * queries, d))
    s_labels = np.tile(np.repeat(np.arange(n_ways), shots), (n_tasks, 1))
    q_labels = np.tile(np.repeat(np.arange(n_ways), queries), (n_tasks, 1))
    return support, s_labels, query, q_labels


def as_torch(support, s_labels, query, q_labels):
    return f32(support), torch.from_numpy(s_labels), f32(query), torch.from_numpy(q_labels)


def _numpy_task_loss_parts(support, s_labels, query, q_labels, n_ways, lam, reference_mask=False):
    """Independent numpy computation of the three loss parts, averaged like torch's mean MSE."""
    mses, weight_sqerr, hinge = [], [], []
    for b in range(len(support)):
        xs = np.hstack([support[b], np.ones((len(support[b]), 1))])
        xq = np.hstack([query[b], np.ones((len(query[b]), 1))])
        ys, yq = onehot_np(s_labels[b], n_ways), onehot_np(q_labels[b], n_ways)
        w_s = numpy_ridge(xs, ys, lam)
        w_full = numpy_ridge(np.vstack([xs, xq]), np.vstack([ys, yq]), lam)
        mses.append((xq @ w_s - yq) ** 2)
        weight_sqerr.append((w_s - w_full) ** 2)
        feats = np.vstack([support[b], query[b]])
        labels = np.concatenate([s_labels[b], q_labels[b]])
        n_s = len(support[b])
        dist = np.sqrt(((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1))
        same = labels[:, None] == labels[None, :]
        if reference_mask:
            block = np.zeros_like(same)
            block[:n_s, :n_s] = True
            block[n_s:, n_s:] = True
            same = same & block
        hinge.append(np.where(same, dist, np.maximum(0.0, 1.0 - dist)))
    return float(np.mean(mses)), float(np.mean(hinge)), float(np.mean(weight_sqerr))


@pytest.mark.parametrize("hinge_mask", ["fixed", "reference"])
def test_task_ridge_loss_parts_equal_independent_numpy_mse_hinge_and_weight_mse(hinge_mask: str) -> None:
    support, s_labels, query, q_labels = _random_task_batch(7)
    out = task_ridge_loss(f32(support), torch.from_numpy(s_labels), f32(query), torch.from_numpy(q_labels),
                          n_ways=3, lam=1e-3, extra_reg=True, hinge_mask=hinge_mask)
    mse, hinge, weight_mse = _numpy_task_loss_parts(support, s_labels, query, q_labels, 3, 1e-3,
                                                    reference_mask=hinge_mask == "reference")
    assert out["mse"].item() == pytest.approx(mse, rel=1e-4)
    assert out["hinge"].item() == pytest.approx(hinge, rel=1e-5)
    assert out["weight_mse"].item() == pytest.approx(weight_mse, rel=1e-3)
    assert out["loss"].item() == pytest.approx(mse + hinge + weight_mse, rel=1e-4)


def test_task_ridge_loss_accepts_float64_features_like_the_ridge_head_does() -> None:
    support, s_labels, query, q_labels = _random_task_batch(7)
    out = task_ridge_loss(torch.from_numpy(support), torch.from_numpy(s_labels), torch.from_numpy(query),
                          torch.from_numpy(q_labels), n_ways=3, lam=1e-3, extra_reg=True)
    mse, hinge, weight_mse = _numpy_task_loss_parts(support, s_labels, query, q_labels, 3, 1e-3)
    assert out["loss"].item() == pytest.approx(mse + hinge + weight_mse, rel=1e-7)


def test_reference_and_fixed_hinge_masks_give_different_hinge_values_on_the_same_task() -> None:
    support, s_labels, query, q_labels = as_torch(*_random_task_batch(8))
    fixed = task_ridge_loss(support, s_labels, query, q_labels, 3, 1e-3, True, "fixed")
    reference = task_ridge_loss(support, s_labels, query, q_labels, 3, 1e-3, True, "reference")
    assert fixed["mse"].item() == reference["mse"].item()
    assert abs(fixed["hinge"].item() - reference["hinge"].item()) > 1e-3


def test_task_ridge_loss_without_extra_reg_returns_only_the_query_mse() -> None:
    support, s_labels, query, q_labels = _random_task_batch(9, n_tasks=1, n_ways=5, shots=1, queries=2, d=16)
    out = task_ridge_loss(f32(support), torch.from_numpy(s_labels), f32(query), torch.from_numpy(q_labels),
                          n_ways=5, lam=1e-3, extra_reg=False)
    assert set(out) == {"mse", "loss"}
    mse, _, _ = _numpy_task_loss_parts(support, s_labels, query, q_labels, 5, 1e-3)
    assert out["mse"].item() == pytest.approx(mse, rel=1e-4)
    assert out["loss"].item() == out["mse"].item()


def test_task_ridge_loss_rejects_an_unknown_hinge_mask_name() -> None:
    support, s_labels, query, q_labels = as_torch(*_random_task_batch(10))
    with pytest.raises(ValueError, match="hinge_mask"):
        task_ridge_loss(support, s_labels, query, q_labels, 3, 1e-3, True, "blockdiag")


def test_task_ridge_loss_gradients_flow_to_support_and_query_features_and_are_finite() -> None:
    support_np, s_labels, query_np, q_labels = _random_task_batch(11)
    support = f32(support_np).requires_grad_(True)
    query = f32(query_np).requires_grad_(True)
    out = task_ridge_loss(support, torch.from_numpy(s_labels), query, torch.from_numpy(q_labels), 3, 1e-3, True)
    out["loss"].backward()
    for grad in (support.grad, query.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum().item() > 0


def test_query_mse_gradient_matches_a_numpy_central_finite_difference() -> None:
    support_np, s_labels, query_np, q_labels = _random_task_batch(12)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # float64 one-hot targets, so the analytic gradient is precise
    try:
        query = torch.from_numpy(query_np).requires_grad_(True)
        task_ridge_loss(torch.from_numpy(support_np), torch.from_numpy(s_labels), query, torch.from_numpy(q_labels), 3,
                        1e-3, False)["loss"].backward()
    finally:
        torch.set_default_dtype(previous)
    eps = 1e-6
    up, down = query_np.copy(), query_np.copy()
    up[0, 2, 4] += eps
    down[0, 2, 4] -= eps
    numeric = (_numpy_task_loss_parts(support_np, s_labels, up, q_labels, 3, 1e-3)[0]
               - _numpy_task_loss_parts(support_np, s_labels, down, q_labels, 3, 1e-3)[0]) / (2 * eps)
    assert abs(numeric) > 1e-4
    assert query.grad[0, 2, 4].item() == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("fit", [ridge_dual, ridge_primal])
def test_a_singular_ridge_system_is_a_one_line_mela_error_advising_a_lower_learning_rate(fit) -> None:
    x = torch.zeros(2, 4, 3)  # all-zero features with lam=0: the system is exactly singular
    y = torch.ones(2, 4, 2)
    with pytest.raises(RidgeSolveError) as caught:
        fit(x, y, 0.0)
    assert isinstance(caught.value, MelaError)
    assert str(caught.value) == ("the ridge solve failed (The solver failed because the input matrix is singular); "
                                 "the features have diverged: lower learning_rate")
    assert isinstance(caught.value.__cause__, torch.linalg.LinAlgError)
