"""Few-shot heads: fit on a task's support set, then predict its queries.

One interface (``fit`` then ``predict``), batched over tasks, so the evaluator
does not care which head it runs: logistic regression (the reference's test-time
classifier), ridge regression (the meta-learner's own head) or prototypes.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mela.errors import MelaError
from mela.methods.ridge import add_intercept, one_hot, ridge_fit


class FewShotHead(Protocol):
    """Fit on (B, n_s, d) support features with (B, n_s) labels; predict (B, n_q) query labels, or (B, n_q, c)
    class probabilities whose argmax is the prediction."""

    def fit(self, support: torch.Tensor, labels: torch.Tensor, n_ways: int) -> FewShotHead: ...

    def predict(self, query: torch.Tensor) -> torch.Tensor: ...

    def predict_proba(self, query: torch.Tensor) -> torch.Tensor: ...


class PrototypeHead:
    """Nearest class mean (Euclidean), the ProtoNet rule."""

    def fit(self, support: torch.Tensor, labels: torch.Tensor, n_ways: int) -> PrototypeHead:
        onehot = one_hot(labels, n_ways).to(support.dtype)  # (B, n, c)
        self.prototypes = (onehot.transpose(-1, -2) @ support) / onehot.sum(-2).unsqueeze(-1)
        return self

    def predict(self, query: torch.Tensor) -> torch.Tensor:
        return torch.cdist(query, self.prototypes).argmin(-1)

    def predict_proba(self, query: torch.Tensor) -> torch.Tensor:
        """ProtoNet's class probabilities: softmax of minus the squared distances to the prototypes."""
        return torch.softmax(-torch.cdist(query, self.prototypes) ** 2, -1)


class RidgeHead:
    """Ridge regression onto one-hot targets with an intercept, as in meta-training."""

    def __init__(self, lam: float = 1e-3) -> None:
        self.lam = lam

    def fit(self, support: torch.Tensor, labels: torch.Tensor, n_ways: int) -> RidgeHead:
        self.weights = ridge_fit(add_intercept(support), one_hot(labels, n_ways).to(support.dtype), self.lam)
        return self

    def predict(self, query: torch.Tensor) -> torch.Tensor:
        return (add_intercept(query) @ self.weights).argmax(-1)

    def predict_proba(self, query: torch.Tensor) -> torch.Tensor:
        """The regression onto one-hot targets read as class scores: clipped at 0 and summing to 1 (ridge has no
        calibrated probabilities; the largest score is always the predicted class). A query whose scores are all
        <= 0 gets the softmax of its scores instead."""
        scores = add_intercept(query) @ self.weights
        clipped = scores.clamp_min(0)
        total = clipped.sum(-1, keepdim=True)
        return torch.where(total > 0, clipped / total.clamp_min(1e-300), torch.softmax(scores, -1))


class LogisticRegressionHead:
    """Multinomial L2 logistic regression, solved exactly for many tasks at once.

    Minimises ``C * sum_i CE(W x_i + b, y_i) + ||W||² / 2`` (bias unpenalised), the
    objective of scikit-learn's ``LogisticRegression(C=C)`` with lbfgs. The optimal W
    lies in the span of the support features, so we rotate each task into that
    span (at most n_support dimensions) and run batched damped Newton steps there:
    the Hessian is tiny ((r+1)·c square) whatever the feature size, and all tasks
    are solved in one tensor program instead of one scikit-learn fit per task.
    """

    def __init__(self, C: float = 1.0, fit_intercept: bool = True, max_iter: int = 50, tol: float = 1e-10,
                 balanced: bool = False) -> None:
        if C <= 0:
            raise MelaError(f"test_C must be positive, got {C}")
        self.C, self.fit_intercept, self.max_iter, self.tol = C, fit_intercept, max_iter, tol
        self.balanced = balanced

    def fit(self, support: torch.Tensor, labels: torch.Tensor, n_ways: int) -> LogisticRegressionHead:
        x = support.double()
        # Orthonormal basis of the span of each task's support features, from the small
        # (n x n) Gram matrix: X = U S Vᵀ gives V = Xᵀ U S⁻¹ and X V = U S.
        evals, evecs = torch.linalg.eigh(x @ x.transpose(-1, -2))
        keep = evals > 1e-10 * evals.amax(-1, keepdim=True).clamp_min(1e-300)
        singular = torch.where(keep, evals.clamp_min(0).sqrt(), torch.zeros_like(evals))
        inverse = torch.where(keep, 1.0 / singular.clamp_min(1e-300), torch.zeros_like(evals))
        self.basis = x.transpose(-1, -2) @ (evecs * inverse.unsqueeze(-2))  # (B, d, n)
        z = evecs * singular.unsqueeze(-2)  # (B, n, n) = X @ basis
        if self.fit_intercept:
            z = add_intercept(z)
        y = one_hot(labels, n_ways).double()
        weights = balanced_weights(y) if self.balanced else None
        self.theta = _newton_multinomial(z, y, self.C, penalise_last=not self.fit_intercept, max_iter=self.max_iter,
                                         tol=self.tol, weights=weights)
        return self

    def decision_function(self, query: torch.Tensor) -> torch.Tensor:
        z = query.double() @ self.basis
        if self.fit_intercept:
            z = add_intercept(z)
        return z @ self.theta

    def predict_proba(self, query: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.decision_function(query), -1)

    def predict(self, query: torch.Tensor) -> torch.Tensor:
        return self.decision_function(query).argmax(-1)


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """(B, n) sample weights n / (c * count of the sample's class), scikit-learn's ``class_weight="balanced"``.

    With unequal support sizes the intercept otherwise learns the support's class frequencies, which in a
    real labelling job say nothing about the queries (measured on glyph task collections: 5-shot-capped
    supports scored 45 % unweighted against 97 % for prototypes). Equal counts give weights of 1.
    """
    counts = y.sum(-2, keepdim=True)  # (B, 1, c)
    present = (counts > 0).sum(-1, keepdim=True).clamp_min(1)  # classes with a support sample
    per_class = torch.where(counts > 0, y.shape[-2] / (present * counts.clamp_min(1)), torch.zeros_like(counts))
    return (y * per_class).sum(-1)


def _objective(z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, C: float, penalty: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    logits = z @ theta
    per_sample = -(y * torch.log_softmax(logits, -1)).sum(-1)
    ce = (per_sample if weights is None else per_sample * weights).sum(-1)
    return C * ce + 0.5 * ((theta**2) * penalty).sum((-1, -2))


def _newton_multinomial(
    z: torch.Tensor, y: torch.Tensor, C: float, penalise_last: bool, max_iter: int, tol: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched damped Newton for multinomial L2 logistic regression.

    z: (B, n, p) inputs (last column is the intercept unless ``penalise_last``);
    y: (B, n, c) one-hot; weights: (B, n) per-sample weights of the cross-entropy, or None.
    Returns theta (B, p, c).
    """
    batch, _, p = z.shape
    c = y.shape[-1]
    penalty = torch.ones(p, 1, dtype=z.dtype, device=z.device)
    if not penalise_last:
        penalty[-1] = 0.0
    theta = torch.zeros(batch, p, c, dtype=z.dtype, device=z.device)
    # Softmax is invariant to shifting all classes' unpenalised bias: a tiny ridge
    # on that block keeps the Newton system non-singular without moving the optimum's predictions.
    diagonal = (penalty + 1e-10 + (1.0 - penalty) * 1e-8).repeat(1, c).reshape(-1)
    value = _objective(z, y, theta, C, penalty, weights)
    for _ in range(max_iter):
        prob = torch.softmax(z @ theta, -1)  # (B, n, c)
        residual = prob - y if weights is None else (prob - y) * weights.unsqueeze(-1)
        grad = C * z.transpose(-1, -2) @ residual + theta * penalty  # (B, p, c)
        # Hessian of the cross-entropy, sum_i w_i (diag(p_i) - p_i p_iᵀ) ⊗ z_i z_iᵀ, laid out (p, c) x (p, c):
        # minus Uᵀ U with u_i = sqrt(w_i) z_i ⊗ p_i, plus the block-diagonal sum_i w_i p_ik z_i z_iᵀ per class k.
        zw = z if weights is None else z * weights.sqrt().unsqueeze(-1)
        u = (zw.unsqueeze(-1) * prob.unsqueeze(-2)).reshape(batch, -1, p * c)
        hess = -(u.transpose(-1, -2) @ u)
        per_class = (zw.unsqueeze(1) * prob.transpose(-1, -2).unsqueeze(-1)).transpose(-1, -2) @ zw.unsqueeze(1)
        hess.view(batch, p, c, p, c).diagonal(dim1=2, dim2=4).add_(per_class.permute(0, 2, 3, 1))
        hess.mul_(C).diagonal(dim1=-2, dim2=-1).add_(diagonal)
        step = torch.linalg.solve(hess, grad.reshape(batch, p * c, 1)).reshape(batch, p, c)
        # Backtracking line search per task: halve until the objective does not increase.
        scale = torch.ones(batch, 1, 1, dtype=z.dtype, device=z.device)
        for _ in range(30):
            candidate = theta - scale * step
            new_value = _objective(z, y, candidate, C, penalty, weights)
            worse = new_value > value + 1e-12 * value.abs()
            if not bool(worse.any()):
                break
            scale = torch.where(worse.view(-1, 1, 1), scale * 0.5, scale)
        theta, previous = candidate, value
        value = new_value
        if bool(((previous - value).abs() <= tol * value.abs().clamp_min(1.0)).all()):
            break
    return theta


HEAD_NAMES = ("logistic", "prototype", "ridge")


def make_head(name: str, C: float = 1.0, use_bias: bool = True, lam: float = 1e-3,
              balanced: bool = False) -> FewShotHead:
    """Build a head by name: ``logistic`` (default), ``ridge`` or ``prototype``; ``balanced`` weighs the
    logistic head's classes equally whatever their support sizes (prototypes already do)."""
    if name == "logistic":
        return LogisticRegressionHead(C=C, fit_intercept=use_bias, balanced=balanced)
    if name == "ridge":
        return RidgeHead(lam=lam)
    if name == "prototype":
        return PrototypeHead()
    raise MelaError(f"unknown few-shot head '{name}'; valid names: {', '.join(HEAD_NAMES)}")
