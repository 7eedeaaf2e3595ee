"""BERT-EMD's many-to-many layer mapping (Li et al. 2020), as the code behind the CR-ILD
paper's EMD-ILD numbers computes it.

Every student layer i carries a weight w_s[i] and every teacher layer j a weight w_t[j]
(each set sums to 1; uniform at the start). Per step, with d[i, j] the distance between
student layer i and teacher layer j (attention-score MSE, or hidden-state MSE):

- the flow F is the optimal transport plan between w_s and w_t under the cost d (the earth
  mover's distance; rows of F sum to w_s, columns to w_t), solved exactly by linear
  programming;
- the loss is sum_ij F[i, j] * d[i, j], F held constant;
- the weights move towards the layers that transport cheaply: a layer's cost per unit of
  weight, c_s[i] = sum_j F[i, j] d[i, j] / w_s[i], becomes w_s[i] proportional to 1 / c_s[i]
  (normalised to sum 1), and likewise for the teacher's columns.

The attention and hidden-state mappings keep separate weights ("separate" in BERT-EMD),
and the weights are updated at every forward pass, as in the reference. They are part of
the training state: checkpoints keep them, so a resumed run continues with the same
weights."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def transport(w_s: np.ndarray, w_t: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The (n_s, n_t) optimal transport plan between weights ``w_s`` and ``w_t`` (each
    summing to 1) under ``cost``: min sum F*cost with F >= 0, F 1 = w_s, F^T 1 = w_t."""
    from scipy.optimize import linprog  # here, not at import: a quarter second every importer would pay

    n_s, n_t = cost.shape
    rows = np.kron(np.eye(n_s), np.ones((1, n_t)))  # sum_j F[i, j]
    cols = np.kron(np.ones((1, n_s)), np.eye(n_t))  # sum_i F[i, j]
    # one equality is implied by the others (both sides sum to 1): drop the last column sum
    a_eq = np.vstack([rows, cols[:-1]])
    b_eq = np.concatenate([w_s, w_t[:-1]])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if res.status != 0:  # cannot happen for valid weights: the problem is always feasible and bounded
        raise RuntimeError(f"optimal transport failed: {res.message}")
    return np.clip(res.x.reshape(n_s, n_t), 0.0, None)


def _inverse_cost(weights: np.ndarray, spent: np.ndarray) -> np.ndarray:
    """BERT-EMD's update: a layer's cost per unit of weight c = spent / weight, then weights
    proportional to 1 / c. The reference leaves a zero-cost layer at weight 0 (and divides
    by that weight at the next step); here a cost of 0 is floored at 1e-30, the limit of
    the same rule: a layer that transports for free takes the weight."""
    cost = np.divide(spent, weights, out=np.zeros_like(spent), where=weights > 0)
    inverse = 1.0 / np.maximum(cost, 1e-30)
    return inverse / inverse.sum()


def updated_weights(flow: np.ndarray, cost: np.ndarray, w_s: np.ndarray, w_t: np.ndarray) \
        -> tuple[np.ndarray, np.ndarray]:
    """The layer weights for the next step, from this step's flow and cost."""
    spent = flow * cost
    return _inverse_cost(w_s, spent.sum(1)), _inverse_cost(w_t, spent.sum(0))


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def emd_loss(cost: torch.Tensor, state: dict, shared: Callable[[torch.Tensor], torch.Tensor] = lambda c: c) \
        -> torch.Tensor:
    """sum_ij F[i, j] cost[i, j] for an (n_s, n_t) ``cost`` that carries gradients, with F
    the transport plan of the layer weights in ``state`` (uniform at first); then moves the
    weights in ``state`` for the next step.

    ``shared`` maps this rank's detached cost to the one all ranks agree on (their mean),
    so that the flow and the weights stay the same on every rank. The plan is solved on
    the host: one synchronisation per step, inherent to EMD. A non-finite cost leaves the
    weights as they are and returns a non-finite loss, which the training loop skips."""
    n_s, n_t = cost.shape
    observed = shared(cost.detach().double()).cpu().numpy()
    if not np.isfinite(observed).all():
        return cost.sum()
    w_s = np.asarray(state.get("student") or uniform(n_s), dtype=np.float64)
    w_t = np.asarray(state.get("teacher") or uniform(n_t), dtype=np.float64)
    flow = transport(w_s, w_t, observed)
    new_s, new_t = updated_weights(flow, observed, w_s, w_t)
    state["student"], state["teacher"] = new_s.tolist(), new_t.tolist()
    return (torch.as_tensor(flow, dtype=cost.dtype, device=cost.device) * cost).sum()
