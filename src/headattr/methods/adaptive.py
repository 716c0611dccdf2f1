"""Error-controlled quadrature of many integrated-gradients paths at once (pure numpy, no model).

Each path p has a vector integrand f_p(a) in R^{H_p} on [0, 1] (the gradient of J with respect to the path's
gates at node a) and a known total T_p = J(1) - J(b). The attributions are

    A_p = scale * integral_0^1 f_p(a) da,      scale = 1 - b,

and completeness says sum_h A_p[h] = T_p. The method (docs/gate-ig.md, "Error-controlled quadrature"):

- with `tol = 0` the path is integrated by the fixed `steps`-node rule alone (Gauss-Legendre by default),
  exactly as before refinement existed: same nodes, weights and summation order, so byte-identical;
- with `tol > 0` every path starts from composite Simpson on equal intervals and is refined by bisection.
  Simpson's nodes are nested: bisecting an interval reuses its three values and costs two new ones (half of
  what a non-nested 2-node Gauss-Legendre split costs, at the same order of accuracy);
- every interval carries a per-head error estimate: on the starting intervals the difference between
  Simpson's and the trapezoid rule (pessimistic); on the halves of a split interval I, the change
  |S(I) - S(L) - S(R)| the split made (the coarse value's error: pessimistic for the halves), shared between
  them in proportion to their own Simpson-trapezoid differences;
- a path is done when its completeness error and its largest per-head estimated error (summed over its
  intervals) are both at most `tol * |T_p| + atol`, or when one more split would pass `max_steps`;
- otherwise, per round: while the estimate fails, every interval whose estimate (for the worst head) is at
  least `SPLIT_FRACTION` of the largest, or above the path's whole bound, is bisected (several at once:
  fewer, larger passes through the model); when the estimates are already small but completeness still
  fails (mass that no node sees, e.g. a peak between nodes), the interval holding the most integrand, with a
  floor that gives every interval its turn (uniform refinement in the limit, which is guaranteed to find it);
- a path that was not refined in a round is done: nothing about it changes any more;
- all paths' new nodes of a round go to the caller in one `evaluate` call, so they are batched through the
  model together; each path's decisions use only its own values, so the result of a path does not depend on
  the other paths, on how the caller batches, or on how many processes share the paths.

Riemann rules are never refined: they exist to reproduce the report's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from headattr.methods.quadrature import nodes_and_weights

# The defaults meet the accuracy and time targets measured in the README ("Defaults", `benchmarks/bench_quadrature.py`)
DEFAULT_BASE_STEPS = 3
DEFAULT_TOL = 0.04
DEFAULT_MAX_STEPS = 256
# Absolute floor of the per-path tolerance, in units of J (nats, for the default mean cross-entropy): paths whose
# gap J(1) - J(b) is about 0 (a layer that does not matter for the variant) cannot meet a purely relative bound,
# and an error of 1e-3 nats is far below any score that ranks a head.
DEFAULT_ATOL = 1e-3
# Per round, every interval whose estimate is at least this fraction of the path's largest is bisected: fewer,
# larger passes than one split per round (docs/gate-ig.md, "Error-controlled quadrature")
SPLIT_FRACTION = 0.5

Request = tuple[int, np.ndarray]  # (path id, alphas in [0, 1], shape [m])
Evaluate = Callable[[list[Request]], list[np.ndarray]]  # -> per request, integrand values [m, H_p]


@dataclass(frozen=True)
class PathResult:
    """One path's quadrature: `integral` is the attributions A_p [H_p] (float64, already times `scale`)."""

    integral: np.ndarray  # [H_p]
    nodes: int  # integrand evaluations spent on the path
    error_estimate: float  # estimated |error| of the worst head's attribution (nan for fixed rules)
    completeness_error: float  # sum(integral) - target
    at_floor: bool = False  # the path's bound was its noise floor (`integrate_paths(noise=)`), not tol's


@dataclass
class _Path:
    """A path's intervals, ordered by `lo`: interval i is [lo[i], hi[i]] with the integrand at its ends and
    midpoint `f[i]` ([3, H]) and a per-head error estimate `error[i]` ([H], >= 0) of its Simpson value.

    Arrays rather than one object per interval: the bookkeeping of a round is a few numpy operations per path,
    not a Python loop over its intervals (on a small model it was a tenth of the run time).
    """

    target: float
    lo: np.ndarray  # [n]
    hi: np.ndarray  # [n]
    f: np.ndarray  # [n, 3, H]
    error: np.ndarray  # [n, H]
    nodes: int


def _simpson(lo: np.ndarray, hi: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Simpson's rule on each interval [n, H] (unscaled) from the values at its ends and midpoint [n, 3, H]."""
    return ((hi - lo) / 6.0)[:, None] * (f[:, 0] + 4.0 * f[:, 1] + f[:, 2])


def _trapezoid_gap(lo: np.ndarray, hi: np.ndarray, f: np.ndarray) -> np.ndarray:
    """|Simpson - trapezoid| per interval [n, H] = width / 3 * |f(lo) - 2 f(mid) + f(hi)|: zero for linear
    integrands, and a pessimistic bound of Simpson's own error for integrands the three values resolve."""
    return ((hi - lo) / 3.0)[:, None] * np.abs(f[:, 0] - 2.0 * f[:, 1] + f[:, 2])


def _weighted_sum(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * values[k] accumulated in k order ([n], [n, H] -> [H]).

    The order is that of `np.einsum("k,vklh->vlh", ...)` in the engine's fixed rule, so a path integrated by
    a fixed rule is byte-identical to it (tested).
    """
    acc = weights[0] * values[0]
    for k in range(1, len(weights)):
        acc = acc + weights[k] * values[k]
    return acc


def _bound(target: float, tol: float, atol: float) -> float:
    return tol * abs(target) + atol


def _floor(path: _Path, noise: float, scale: float) -> float:
    """`noise` x scale x the integral of sum over heads of |f| (Simpson on the path's intervals): the error that
    an integrand of relative rounding noise `noise` leaves however many nodes it gets (0 when `noise` is)."""
    if noise == 0:
        return 0.0
    return noise * scale * float(_simpson(path.lo, path.hi, np.abs(path.f)).sum())


def _status(path: _Path, scale: float) -> tuple[np.ndarray, float, float]:
    """(attributions [H], largest per-head estimated error, completeness error) of the path as it stands."""
    integral = scale * _simpson(path.lo, path.hi, path.f).sum(axis=0)
    estimate = scale * float(path.error.sum(axis=0).max())  # the largest head's: what bounds a score's error
    return integral, estimate, float(integral.sum() - path.target)


def _intervals_to_split(path: _Path, estimate: float, bound: float, budget: int, scale: float) -> np.ndarray:
    """Indices (ascending) of the intervals to bisect this round, at most `budget` of them, given the path's
    largest per-head estimate and its bound (`_status`, `_bound`).

    While the estimate fails, for the worst head: every interval whose own estimate exceeds the bound (the
    whole path's: it must be split whatever the others do), and every interval whose estimate is at least
    `SPLIT_FRACTION` of the largest; the largest first (ties: leftmost). When only completeness fails: the
    interval that holds the most integrand, width x (the largest sum over heads of |f| at its nodes + |T_p|):
    refinement goes first where the integrand is large, yet reaches every interval (the widest when all read
    0).
    """
    if estimate > bound:
        worst = int(np.argmax(path.error.sum(axis=0)))
        errors = path.error[:, worst]
        order = np.lexsort((np.arange(len(errors)), -errors))  # largest first, ties leftmost
        wanted = (errors >= SPLIT_FRACTION * errors[order[0]]) | (scale * errors > bound)
        return np.sort(order[wanted[order]][:budget])
    # |T_p| added to every interval's size: an interval whose nodes all read ~0 may hide a bump between them,
    # and it still gets its turn once the active intervals have shrunk (uniform refinement in the limit)
    held = (path.hi - path.lo) * (np.abs(path.f).sum(axis=2).max(axis=1) + abs(path.target))
    if not held.any():
        held = path.hi - path.lo
    return np.array([int(np.argmax(held))])  # ties: leftmost


def _split(path: _Path, chosen: np.ndarray, quarters: np.ndarray) -> None:
    """Bisect the intervals `chosen` (ascending) of `path` from the integrand at their quarter points
    ([k, 2, H]), with error estimates for the halves.

    A split changes an interval's value by d = S(I) - S(L) - S(R): the error of the coarse value S(I), which
    for an integrand still being resolved bounds the halves' error from above. d is shared between the halves
    in proportion to their own Simpson-trapezoid differences, so the half that holds the feature gets most of
    it and is bisected next; halves whose differences are both 0 share it equally.
    """
    lo, hi, f = path.lo[chosen], path.hi[chosen], path.f[chosen]
    mid = 0.5 * (lo + hi)
    f_left = np.stack([f[:, 0], quarters[:, 0], f[:, 1]], axis=1)
    f_right = np.stack([f[:, 1], quarters[:, 1], f[:, 2]], axis=1)
    change = np.abs(_simpson(lo, hi, f) - (_simpson(lo, mid, f_left) + _simpson(mid, hi, f_right)))
    gap_left, gap_right = _trapezoid_gap(lo, mid, f_left), _trapezoid_gap(mid, hi, f_right)
    gaps = gap_left + gap_right
    share = np.divide(gap_left, gaps, out=np.full_like(gaps, 0.5), where=gaps > 0)
    # every interval becomes one piece, a chosen one two: its left half where it was, its right half after it
    pieces = np.ones(len(path.lo), dtype=int)
    pieces[chosen] = 2
    left = (np.cumsum(pieces) - pieces)[chosen]
    right = left + 1
    path.lo, path.hi = np.repeat(path.lo, pieces), np.repeat(path.hi, pieces)
    path.f, path.error = np.repeat(path.f, pieces, axis=0), np.repeat(path.error, pieces, axis=0)
    path.hi[left], path.lo[right] = mid, mid
    path.f[left], path.f[right] = f_left, f_right
    path.error[left], path.error[right] = change * share, change * (1.0 - share)


def _check_values(values: np.ndarray, m: int, path_id: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != m:
        raise ValueError(f"evaluate returned shape {values.shape} for path {path_id}; expected [{m}, H]")
    return values


def base_intervals(steps: int) -> int:
    """Starting intervals of the refined rule for `steps` nodes: Simpson needs an odd count, so `steps` is
    rounded up to the next odd number >= 3 (2 or 3 nodes: one interval; 8 or 9: four)."""
    return max(1, steps // 2)


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
    noise: float = 0.0,
) -> list[PathResult]:
    """Integrate paths 0..len(targets)-1; `evaluate` is called once per round with every path's new nodes.

    `tol` is the relative tolerance: 0 (or any rule but Gauss-Legendre) means the fixed `steps`-node `rule`
    of `quadrature.RULES`, with a nan error estimate; > 0 the refined rule, from `steps` nodes (rounded up to
    an odd number, `base_intervals`). `max_steps` is the most evaluations per path, `atol` the absolute floor
    (units of J), `scale` = 1 - b. Paths may have different head counts H_p. `noise` is the integrand's
    relative rounding noise (0: none to speak of): a path's bound is never below `noise` times the integral of
    its |integrand| summed over heads (`_floor`), since no number of nodes resolves an integrand more finely
    than its own rounding (docs/gate-ig.md, "Precision").
    """
    if tol < 0 or atol < 0:
        raise ValueError(f"tolerances must be >= 0, got tol={tol}, atol={atol}")
    if tol == 0 or rule != "gauss-legendre":
        if steps < 1:
            raise ValueError(f"need steps >= 1, got {steps}")
        return _fixed(evaluate, targets, rule, steps, scale)
    n_intervals = base_intervals(steps)
    if steps < 1 or max_steps < 2 * n_intervals + 1:
        raise ValueError(
            f"need 1 <= steps and the base rule's nodes <= max_steps, got steps={steps}, max_steps={max_steps}"
        )
    paths = _base_round(evaluate, targets, n_intervals)
    active = range(len(paths))
    while active:
        plans = []
        for p in active:
            path = paths[p]
            budget = (max_steps - path.nodes) // 2
            _, estimate, completeness = _status(path, scale)
            bound = max(_bound(path.target, tol, atol), _floor(path, noise, scale))
            if budget >= 1 and (abs(completeness) > bound or estimate > bound):
                plans.append((p, _intervals_to_split(path, estimate, bound, budget, scale)))
        if plans:
            _refine_round(evaluate, paths, plans)
        active = [p for p, _ in plans]  # a path not refined this round is done: nothing about it changes
    return [_result(path, scale, tol, atol, noise) for path in paths]


def _base_round(evaluate: Evaluate, targets: Sequence[float], n_intervals: int) -> list[_Path]:
    """Every path on `n_intervals` equal intervals (2 n_intervals + 1 nodes), in one `evaluate` call."""
    x = np.linspace(0.0, 1.0, 2 * n_intervals + 1)
    values = evaluate([(p, x.copy()) for p in range(len(targets))])
    lo, hi = x[0:-1:2], x[2::2]
    paths = []
    for p, (target, vals) in enumerate(zip(targets, values, strict=True)):
        vals = _check_values(vals, len(x), p)
        f = np.stack([vals[0:-1:2], vals[1::2], vals[2::2]], axis=1)  # [n_intervals, 3, H]
        paths.append(_Path(float(target), lo.copy(), hi.copy(), f, _trapezoid_gap(lo, hi, f), len(x)))
    return paths


def _refine_round(evaluate: Evaluate, paths: list[_Path], plans: list[tuple[int, np.ndarray]]) -> None:
    """Bisect the chosen intervals of each path (two new nodes each: the quarter points); one `evaluate` call."""
    requests = []
    for p, chosen in plans:
        lo, width = paths[p].lo[chosen], paths[p].hi[chosen] - paths[p].lo[chosen]
        requests.append((p, (lo[:, None] + np.array([0.25, 0.75]) * width[:, None]).reshape(-1)))
    values = evaluate(requests)
    for (p, chosen), (_, alphas), vals in zip(plans, requests, values, strict=True):
        vals = _check_values(vals, len(alphas), p)
        _split(paths[p], chosen, vals.reshape(len(chosen), 2, -1))
        paths[p].nodes += len(alphas)


def _fixed(evaluate: Evaluate, targets: Sequence[float], rule: str, n: int, scale: float) -> list[PathResult]:
    """A fixed rule of `quadrature.RULES` (never refined)."""
    x, w = nodes_and_weights(rule, n)
    values = evaluate([(p, x) for p in range(len(targets))])
    out = []
    for p, (target, vals) in enumerate(zip(targets, values, strict=True)):
        integral = scale * _weighted_sum(w, _check_values(vals, n, p))
        out.append(PathResult(integral, n, float("nan"), float(integral.sum() - target)))
    return out


def _result(path: _Path, scale: float, tol: float, atol: float, noise: float) -> PathResult:
    integral, estimate, completeness = _status(path, scale)
    at_floor = _floor(path, noise, scale) > _bound(path.target, tol, atol)
    return PathResult(integral, path.nodes, estimate, completeness, at_floor)
