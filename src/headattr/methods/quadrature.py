"""Quadrature rules for the integrated-gradients path integral over [0, 1] (spec: `--rule`).

Gauss-Legendre is the default: with n nodes it integrates polynomials of degree 2n-1 exactly, so at equal
cost its completeness error is far below a Riemann sum's (tests measure this). The report's right Riemann sum
stays available as `riemann-right`.
"""

from __future__ import annotations

import numpy as np

RULES = ("gauss-legendre", "riemann-right", "riemann-left", "riemann-middle", "riemann-trapezoid")


def nodes_and_weights(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes a_k in [0, 1] and weights w_k (summing to 1) of `rule` with `n` points, float64."""
    if n < 1:
        raise ValueError(f"the number of steps must be at least 1, got {n}")
    k = np.arange(n, dtype=np.float64)
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return (x + 1.0) / 2.0, w / 2.0
    if rule == "riemann-right":
        return (k + 1.0) / n, np.full(n, 1.0 / n)
    if rule == "riemann-left":
        return k / n, np.full(n, 1.0 / n)
    if rule == "riemann-middle":
        return (k + 0.5) / n, np.full(n, 1.0 / n)
    if rule == "riemann-trapezoid":
        if n == 1:  # one node cannot include both ends: the midpoint is the only symmetric choice
            return np.array([0.5]), np.array([1.0])
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return np.linspace(0.0, 1.0, n), w
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
