"""Error-controlled quadrature of many integrated-gradients paths at once (pure numpy, no model).

Each path p has a vector integrand f_p(a) in R^{H_p} on [0, 1] (the gradient of J with respect to the path's
gates at node a) and a known total T_p = J(1) - J(b). The attributions are

    A_p = scale * integral_0^1 f_p(a) da,      scale = 1 - b  (as in `engine.attribute_sample`),

and completeness says sum_h A_p[h] = T_p. The method (docs/gate-ig.md, "Error-controlled quadrature"):

- the base rule is n-node Gauss-Legendre on [0, 1]: exactly today's fixed rule (same nodes, weights and
  summation order), and with `tol = 0` nothing else is done, so results are byte-identical;
- every interval of a path is integrated by n-node Gauss-Legendre mapped to it and carries a per-head error
  estimate: on [0, 1] the size of the two highest Legendre coefficients of the interpolant through its n
  values (free: no extra evaluation); on the halves of a split interval I, the change |G(I) - G(L) - G(R)|
  the split made (the coarse rule's error: pessimistic for the halves), shared between them in proportion
  to their own Legendre tails;
- a path is done when its completeness error and its largest per-head estimated error (summed over its
  intervals) are both at most `tol * |T_p| + atol`, or when one more split would pass `max_steps`;
- otherwise one interval is bisected per round: the one with the largest estimate; when the estimates are
  already small but completeness still fails (mass that no node sees, e.g. a peak between nodes), the widest
  interval, i.e. uniform refinement, which is guaranteed to find it;
- all paths' new nodes of a round go to the caller in one `evaluate` call, so they are batched through the
  model together; each path's decisions use only its own values, so the result of a path does not depend on
  the other paths, on how the caller batches, or on how many processes share the paths.

Riemann rules are never refined: they exist to reproduce the report's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .quadrature import nodes_and_weights

# Tuned on the built-in model (docs/gate-ig.md, "Measured"): a 2-node base rule and tol 0.03 meet the issue's
# target (total completeness error <= 2% of the gap, scores within 1% of a 256-node run, <= 2.5x the gradients of
# the fixed 8-node rule); tol 0.01 is 5-10x more accurate than the target but costs 3.2-4.3x.
DEFAULT_BASE_STEPS = 2
DEFAULT_TOL = 0.03
DEFAULT_MAX_STEPS = 256
# Absolute floor of the per-path tolerance, in units of J (nats, for the default mean cross-entropy): paths whose
# gap J(1) - J(b) is about 0 (a layer that does not matter for the variant) cannot meet a purely relative bound,
# and an error of 1e-3 nats is far below any score that ranks a head.
DEFAULT_ATOL = 1e-3

Request = tuple[int, np.ndarray]  # (path id, alphas in [0, 1], shape [m])
Evaluate = Callable[[list[Request]], list[np.ndarray]]  # -> per request, integrand values [m, H_p]


@dataclass(frozen=True)
class PathResult:
    """One path's quadrature: `integral` is the attributions A_p [H_p] (float64, already times `scale`)."""

    integral: np.ndarray  # [H_p]
    nodes: int  # integrand evaluations spent on the path
    error_estimate: float  # estimated |error| of the worst head's attribution (nan for Riemann rules)
    completeness_error: float  # sum(integral) - target


@dataclass
class _Leaf:
    """An interval [lo, hi] of a path: its Gauss-Legendre value and per-head error estimate (unscaled)."""

    lo: float
    hi: float
    value: np.ndarray  # [H]
    error: np.ndarray  # [H], >= 0


@dataclass
class _Path:
    target: float
    leaves: list[_Leaf] = field(default_factory=list)  # ordered by `lo`
    nodes: int = 0


@lru_cache(maxsize=64)
def _unit_rule(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-node Gauss-Legendre on [0, 1] (nodes [n], weights [n]) and the [n, n] map from values to the
    Legendre coefficients of their interpolant (exact: the rule integrates degree 2n - 2 products)."""
    x, w = nodes_and_weights("gauss-legendre", n)
    t = 2.0 * x - 1.0  # back to [-1, 1]
    legendre = np.polynomial.legendre.legvander(t, n - 1).T  # [j, k] = P_j(t_k)
    # c_j = (2j + 1) / 2 * sum_k W_k P_j(t_k) f_k with [-1, 1]'s weights W = 2 w
    to_coef = (2.0 * np.arange(n)[:, None] + 1.0) * legendre * w[None, :]
    for a in (x, w, to_coef):
        a.setflags(write=False)  # cached: shared by every call
    return x, w, to_coef


def _weighted_sum(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * values[k] accumulated in k order ([n], [n, H] -> [H]).

    The order is that of `np.einsum("k,vklh->vlh", ...)` in the engine's fixed rule, so a path integrated by
    the base rule alone is byte-identical to it (tested).
    """
    acc = weights[0] * values[0]
    for k in range(1, len(weights)):
        acc = acc + weights[k] * values[k]
    return acc


def _tail_estimate(values: np.ndarray, width: float) -> np.ndarray:
    """Per-head error estimate [H] of an interval's n-node rule from its values [n, H]: width times the two
    highest Legendre coefficients of the interpolant (two, because an odd or even integrand zeroes one).

    An integrand that the n values resolve has decayed coefficients, and then the rule's error (exact to degree
    2n - 1) is far below them; one that they do not resolve has large ones. With n <= 2 this is the value
    itself: so few nodes say nothing about the error.
    """
    n = len(values)
    coef = _unit_rule(n)[2] @ values
    return width * np.abs(coef[max(n - 2, 0) :]).sum(axis=0)


def _bound(target: float, tol: float, atol: float) -> float:
    return tol * abs(target) + atol


def _total(path: _Path) -> np.ndarray:
    """Unscaled integral [H]: the leaves' values summed left to right (a fixed order: deterministic)."""
    acc = path.leaves[0].value
    for leaf in path.leaves[1:]:
        acc = acc + leaf.value
    return acc


def _status(path: _Path, scale: float) -> tuple[np.ndarray, float, float]:
    """(attributions [H], largest per-head estimated error, completeness error) of the path as it stands."""
    integral = scale * _total(path)
    per_head = path.leaves[0].error
    for leaf in path.leaves[1:]:
        per_head = per_head + leaf.error
    estimate = scale * float(per_head.max())  # the largest head's: what bounds a score's error
    return integral, estimate, float(integral.sum() - path.target)


def _converged(path: _Path, scale: float, tol: float, atol: float) -> bool:
    _, estimate, completeness = _status(path, scale)
    bound = _bound(path.target, tol, atol)
    return abs(completeness) <= bound and estimate <= bound


def _leaf_to_split(path: _Path, scale: float, tol: float, atol: float) -> int:
    """Index of the leaf to bisect: the one with the largest estimate for the worst head, or, when the estimates
    are within tolerance and only completeness fails, the widest leaf (ties: largest estimate, then leftmost)."""
    if _status(path, scale)[1] > _bound(path.target, tol, atol):
        per_head = np.sum([leaf.error for leaf in path.leaves], axis=0)
        worst = int(np.argmax(per_head))
        return int(np.argmax([leaf.error[worst] for leaf in path.leaves]))  # first maximum: leftmost on ties
    errors = [float(leaf.error.sum()) for leaf in path.leaves]
    keys = [(-(leaf.hi - leaf.lo), -e, i) for i, (leaf, e) in enumerate(zip(path.leaves, errors, strict=True))]
    return min(keys)[2]


def _halves_nodes(leaf: _Leaf, n: int) -> tuple[float, np.ndarray]:
    """Midpoint of `leaf` and the 2n nodes of the rule on its two halves ([2n]: left half first)."""
    x = _unit_rule(n)[0]
    mid = 0.5 * (leaf.lo + leaf.hi)
    return mid, np.concatenate([leaf.lo + (mid - leaf.lo) * x, mid + (leaf.hi - mid) * x])


def _split(leaf: _Leaf, mid: float, values: np.ndarray, n: int) -> tuple[_Leaf, _Leaf]:
    """The two halves of `leaf` from their values [2n, H], with per-head error estimates.

    The split changed the interval's value by d = G(I) - G(L) - G(R): the error of the coarse value G(I), which
    for an integrand still being resolved bounds the halves' error from above. d is shared between the halves
    in proportion to their own Legendre-tail estimates, so the half that holds the feature gets most of it and
    is bisected next; halves whose tails are both 0 share it equally.
    """
    w = _unit_rule(n)[1]
    left = _weighted_sum((mid - leaf.lo) * w, values[:n])
    right = _weighted_sum((leaf.hi - mid) * w, values[n:])
    change = np.abs(leaf.value - (left + right))
    tail_left, tail_right = _tail_estimate(values[:n], mid - leaf.lo), _tail_estimate(values[n:], leaf.hi - mid)
    tails = tail_left + tail_right
    share = np.divide(tail_left, tails, out=np.full_like(tails, 0.5), where=tails > 0)
    return _Leaf(leaf.lo, mid, left, change * share), _Leaf(mid, leaf.hi, right, change * (1.0 - share))


def _check_values(values: np.ndarray, m: int, path_id: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != m:
        raise ValueError(f"evaluate returned shape {values.shape} for path {path_id}; expected [{m}, H]")
    return values


def integrate_paths(
    evaluate: Evaluate,
    targets: Sequence[float],
    *,
    steps: int,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    atol: float = DEFAULT_ATOL,
    scale: float = 1.0,
    rule: str = "gauss-legendre",
) -> list[PathResult]:
    """Integrate paths 0..len(targets)-1; `evaluate` is called once per round with every path's new nodes.

    `steps` is the base rule's node count (`--ig-steps`), `tol` the relative tolerance (0: the fixed rule only),
    `max_steps` the most evaluations per path, `atol` the absolute floor (units of J), `scale` = 1 - b. Paths
    may have different head counts H_p. Only Gauss-Legendre is refined; any other rule of `quadrature.RULES`
    is its fixed rule, with a nan error estimate.
    """
    if steps < 1 or max_steps < steps:
        raise ValueError(f"need 1 <= steps <= max_steps, got steps={steps}, max_steps={max_steps}")
    if tol < 0 or atol < 0:
        raise ValueError(f"tolerances must be >= 0, got tol={tol}, atol={atol}")
    if rule != "gauss-legendre":
        return _fixed(evaluate, targets, rule, steps, scale)
    paths = _base_round(evaluate, targets, steps)
    refine = tol > 0
    while refine:
        active = [
            p
            for p, path in enumerate(paths)
            if path.nodes + 2 * steps <= max_steps and not _converged(path, scale, tol, atol)
        ]
        if not active:
            break
        _refine_round(evaluate, paths, active, steps, scale, tol, atol)
    return [_result(path, scale) for path in paths]


def _base_round(evaluate: Evaluate, targets: Sequence[float], n: int) -> list[_Path]:
    """Every path on [0, 1] with the base rule, in one `evaluate` call."""
    x, w, _ = _unit_rule(n)
    values = evaluate([(p, x.copy()) for p in range(len(targets))])
    paths = []
    for p, (target, vals) in enumerate(zip(targets, values, strict=True)):
        vals = _check_values(vals, n, p)
        leaf = _Leaf(0.0, 1.0, _weighted_sum(w, vals), _tail_estimate(vals, 1.0))
        paths.append(_Path(float(target), [leaf], n))
    return paths


def _refine_round(
    evaluate: Evaluate, paths: list[_Path], active: list[int], n: int, scale: float, tol: float, atol: float
) -> None:
    """Bisect one leaf of each active path; all new nodes in one `evaluate` call."""
    chosen = [(p, _leaf_to_split(paths[p], scale, tol, atol)) for p in active]
    plans = [(p, i, *_halves_nodes(paths[p].leaves[i], n)) for p, i in chosen]
    values = evaluate([(p, alphas) for p, _, _, alphas in plans])
    for (p, i, mid, alphas), vals in zip(plans, values, strict=True):
        path = paths[p]
        path.leaves[i : i + 1] = _split(path.leaves[i], mid, _check_values(vals, len(alphas), p), n)
        path.nodes += len(alphas)


def _fixed(evaluate: Evaluate, targets: Sequence[float], rule: str, n: int, scale: float) -> list[PathResult]:
    """A fixed rule of `quadrature.RULES` (never refined)."""
    x, w = nodes_and_weights(rule, n)
    values = evaluate([(p, x) for p in range(len(targets))])
    out = []
    for p, (target, vals) in enumerate(zip(targets, values, strict=True)):
        integral = scale * _weighted_sum(w, _check_values(vals, n, p))
        out.append(PathResult(integral, n, float("nan"), float(integral.sum() - target)))
    return out


def _result(path: _Path, scale: float) -> PathResult:
    integral, estimate, completeness = _status(path, scale)
    return PathResult(integral, path.nodes, estimate, completeness)
