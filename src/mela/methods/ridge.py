"""The ridge-regression meta-learner's math, as small pure tensor functions.

Everything here is batched over leading dimensions, so one call handles a
single task (n, d) or a stack of tasks (B, n, d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mela.errors import MelaError


class RidgeSolveError(MelaError):
    """The ridge system could not be solved: the features are not finite or degenerate (a diverged model)."""


def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve``, with its failure (singular or non-finite system) as a one-line RidgeSolveError."""
    try:
        return torch.linalg.solve(a, b)
    except torch.linalg.LinAlgError as exc:
        reason = str(exc).split(": ")[-1].rstrip(".") or "singular system"
        raise RidgeSolveError(f"the ridge solve failed ({reason}); the features have diverged: "
                              "lower learning_rate") from exc


def add_intercept(x: torch.Tensor) -> torch.Tensor:
    """Append a constant-1 feature, so the ridge solution carries a bias."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Float one-hot targets, the regression targets of the ridge head."""
    return F.one_hot(labels.long(), n_classes).to(torch.get_default_dtype())


def ridge_dual(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """W = Xᵀ (λI + X Xᵀ)⁻¹ Y: cheap when a task has fewer samples than features."""
    n = x.shape[-2]
    gram = x @ x.transpose(-1, -2)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    alpha = solve(gram + lam * eye, y)
    return x.transpose(-1, -2) @ alpha


def ridge_primal(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """W = (XᵀX + λI)⁻¹ XᵀY: the same solution, cheaper when features are few."""
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return solve(x.transpose(-1, -2) @ x + lam * eye, x.transpose(-1, -2) @ y)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge weights by whichever of the two equivalent forms is cheaper."""
    return ridge_dual(x, y, lam) if x.shape[-2] <= x.shape[-1] else ridge_primal(x, y, lam)


def same_class_mask(labels: torch.Tensor) -> torch.Tensor:
    """(n, n) boolean: True where two samples share a label."""
    return labels.unsqueeze(-1) == labels.unsqueeze(-2)


def reference_hinge_mask(support_labels: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """The reference's mask: block-diag(support, query), so support-query pairs count as different.

    This is a quirk (same-class support-query pairs are pushed apart); it is kept
    only to reproduce the reference with ``hinge_mask=reference``.
    """
    n_s, n_q = support_labels.shape[-1], query_labels.shape[-1]
    mask = torch.zeros(*support_labels.shape[:-1], n_s + n_q, n_s + n_q, dtype=torch.bool,
                       device=support_labels.device)
    mask[..., :n_s, :n_s] = same_class_mask(support_labels)
    mask[..., n_s:, n_s:] = same_class_mask(query_labels)
    return mask


def hinge_embedding_loss(features: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over all pairs (i, j) of d_ij if same class else max(0, margin - d_ij).

    d is the Euclidean distance; the diagonal pairs count (d = 0), as in the reference.
    """
    dist = torch.cdist(features, features)
    per_pair = torch.where(same, dist, (margin - dist).clamp_min(0.0))
    return per_pair.mean()


def task_ridge_loss(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    n_ways: int,
    lam: float,
    extra_reg: bool,
    hinge_mask: str = "fixed",
) -> dict[str, torch.Tensor]:
    """The meta-learner's episodic loss on a batch of tasks (see REFERENCE.md, step 1).

    Args:
        support, query: (B, n, d) features (no intercept yet).
        support_labels, query_labels: (B, n) local labels 0..n_ways-1.
        hinge_mask: ``fixed`` treats every same-class pair as same; ``reference``
            reproduces the reference's block-diagonal mask.

    Returns:
        dict with ``loss`` (the total) and its parts ``mse``, ``hinge``, ``weight_mse``.
    """
    xs, xq = add_intercept(support), add_intercept(query)
    ys = one_hot(support_labels, n_ways).to(support.dtype)
    yq = one_hot(query_labels, n_ways).to(query.dtype)
    w_support = ridge_fit(xs, ys, lam)
    mse = F.mse_loss(xq @ w_support, yq)
    parts = {"mse": mse}
    total = mse
    if extra_reg:
        x_all = torch.cat([xs, xq], dim=-2)
        y_all = torch.cat([ys, yq], dim=-2)
        w_full = ridge_fit(x_all, y_all, lam)
        if hinge_mask == "reference":
            same = reference_hinge_mask(support_labels, query_labels)
        elif hinge_mask == "fixed":
            same = same_class_mask(torch.cat([support_labels, query_labels], dim=-1))
        else:
            raise ValueError(f"hinge_mask must be 'fixed' or 'reference', got {hinge_mask!r}")
        hinge = hinge_embedding_loss(torch.cat([support, query], dim=-2), same)
        weight_mse = F.mse_loss(w_support, w_full)
        parts.update(hinge=hinge, weight_mse=weight_mse)
        total = total + hinge + weight_mse
    parts["loss"] = total
    return parts
