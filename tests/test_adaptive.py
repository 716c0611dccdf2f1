"""Error-controlled quadrature (`headattr.adaptive`) on integrands with closed-form integrals."""

from __future__ import annotations

import numpy as np
import pytest

from headattr.methods.adaptive import integrate_paths
from headattr.methods.quadrature import nodes_and_weights


def vector_integrand(*heads):
    """An `evaluate` callback for paths whose heads are the scalar functions `heads[p]` (tuples of callables)."""

    def evaluate(requests):
        return [np.stack([f(np.asarray(a)) for f in heads[p]], axis=1) for p, a in requests]

    return evaluate


def peak(eps: float):
    """exp(-a / eps) / eps: the mass sits within a few eps of a = 0, as on a path that breaks the model."""
    return lambda a: np.exp(-a / eps) / eps, 1.0 - np.exp(-1.0 / eps)


def counting(evaluate):
    """Wrap `evaluate`, recording every call's requests."""
    calls = []

    def wrapped(requests):
        calls.append([(p, np.array(a)) for p, a in requests])
        return evaluate(requests)

    return wrapped, calls


def test_linear_integrands_are_not_refined_and_cubics_after_one_split():
    # Simpson minus trapezoid vanishes for a linear integrand, so the starting estimate is rounding only; Simpson
    # is exact for cubics, so one split changes nothing and the estimate of the halves is rounding only
    lines = [np.polynomial.Polynomial(c) for c in ([1.0], [0.5, -2.0])]
    cubics = [np.polynomial.Polynomial(c) for c in ([0.5, -2.0, 3.0], [1, 2, 3, -4])]
    for polys, nodes, rounds in ((lines, 3, 1), (cubics, 5, 2)):
        exact = [float(p.integ()(1.0) - p.integ()(0.0)) for p in polys]
        evaluate, calls = counting(vector_integrand(tuple(polys)))
        (r,) = integrate_paths(evaluate, [sum(exact)], steps=3, tol=1e-6, atol=1e-12)
        assert r.nodes == nodes and len(calls) == rounds
        np.testing.assert_allclose(r.integral, exact, rtol=1e-13)
        assert r.error_estimate < 1e-12 and abs(r.completeness_error) < 1e-12


@pytest.mark.parametrize("eps", [0.1, 0.02, 0.003])
@pytest.mark.parametrize("steps", [4, 8])
def test_sharp_peak_near_zero_meets_the_tolerance(eps, steps):
    f, exact = peak(eps)
    const = (lambda a: np.full_like(a, 2.0), 2.0)
    evaluate = vector_integrand((f, const[0]))
    target = exact + const[1]
    (fixed,) = integrate_paths(evaluate, [target], steps=steps, tol=0.0)
    (r,) = integrate_paths(evaluate, [target], steps=steps, tol=1e-4, atol=0.0, max_steps=4096)
    assert abs(r.completeness_error) <= 1e-4 * target and r.error_estimate <= 1e-4 * target
    assert abs(r.integral[0] - exact) <= 1e-4 * target and abs(r.integral[1] - 2.0) < 1e-12
    assert r.nodes > steps and r.nodes < 4096
    if abs(fixed.integral[0] - exact) > 1e-4 * target:  # where the fixed rule misses, refinement gains 10x
        assert abs(r.integral[0] - exact) < abs(fixed.integral[0] - exact) / 10


def test_kink_and_scale():
    # |a - 0.3| has a kink the rule cannot resolve; with b = 0.5 the attributions are 0.5 * the integral
    evaluate = vector_integrand((lambda a: np.abs(a - 0.3),))
    exact = (0.3**2 + 0.7**2) / 2
    (r,) = integrate_paths(evaluate, [0.5 * exact], steps=4, tol=1e-6, atol=0.0, scale=0.5, max_steps=10_000)
    assert abs(r.integral[0] - 0.5 * exact) <= 1e-6 * 0.5 * exact and r.nodes > 4


def test_mass_between_the_nodes_is_found_by_completeness():
    # a peak far narrower than the distance from 0 to the first node: every node sees ~0, so no local estimate
    # can see the mass; only the known total can, and uniform refinement then finds it
    f, exact = peak(1e-4)
    evaluate = vector_integrand((f,))
    (r,) = integrate_paths(evaluate, [exact], steps=4, tol=1e-3, atol=0.0, max_steps=100_000)
    assert abs(r.integral[0] - exact) <= 1e-3 * exact


def test_mass_hidden_where_every_node_reads_zero_is_found_next_to_a_large_integrand():
    # the integrand is large near 0 (where refinement goes first) and a narrow bump at 0.73 sits between nodes
    # that all read ~0: weighting the intervals by the integrand they hold must not starve the quiet ones
    width = 1e-3
    bump = lambda a: np.exp(-0.5 * ((a - 0.73) / width) ** 2)  # noqa: E731
    early = lambda a: 50.0 * np.exp(-a / 0.05)  # noqa: E731
    exact = width * np.sqrt(2 * np.pi) + 50.0 * 0.05 * (1 - np.exp(-20.0))
    evaluate = vector_integrand((lambda a: bump(a) + early(a),))
    (r,) = integrate_paths(evaluate, [exact], steps=3, tol=1e-4, atol=0.0, max_steps=100_000)
    assert abs(r.integral[0] - exact) <= 1e-4 * exact


def test_cancelling_heads_are_refined_by_the_per_head_estimate():
    # two heads with opposite peaks: the sum is exactly 0 = T at every node, so completeness always holds; only
    # the per-head estimate shows that each head's attribution is wrong
    f, exact = peak(0.01)
    evaluate = vector_integrand((f, lambda a: -f(a)))
    (fixed,) = integrate_paths(evaluate, [0.0], steps=4, tol=0.0)
    assert abs(fixed.completeness_error) < 1e-12 and abs(fixed.integral[0] - exact) > 0.1
    (r,) = integrate_paths(evaluate, [0.0], steps=4, tol=0.01, atol=1e-4, max_steps=10_000)
    np.testing.assert_allclose(r.integral, [exact, -exact], atol=1e-3)


@pytest.mark.parametrize("rule", ["gauss-legendre", "riemann-right", "riemann-trapezoid"])
@pytest.mark.parametrize("n", [1, 3, 8, 17])
def test_tol_zero_is_the_engines_fixed_rule_byte_for_byte(rule, n):
    # the engine: attributions[:, layers] = (1 - b) * np.einsum("k,vklh->vlh", weights, grads)
    rng = np.random.default_rng(n)
    n_var, n_layers, n_heads, b = 5, 3, 4, 0.25
    grads = rng.standard_normal((n_var, n, n_layers, n_heads)) * np.exp(3 * rng.standard_normal((n_var, n, 1, 1)))
    nodes, weights = nodes_and_weights(rule, n)
    engine = (1.0 - b) * np.einsum("k,vklh->vlh", weights, grads)
    targets = rng.standard_normal(n_var)

    def evaluate(requests):
        for _, a in requests:
            assert a.tobytes() == nodes.tobytes()  # the same nodes
        return [grads[p].reshape(n, -1) for p, _ in requests]

    tol = 0.0 if rule == "gauss-legendre" else 0.01  # Riemann: never refined, whatever the tolerance
    results = integrate_paths(evaluate, targets, steps=n, tol=tol, scale=1 - b, rule=rule)
    for v, r in enumerate(results):
        assert r.integral.tobytes() == engine[v].reshape(-1).tobytes() and r.nodes == n
        assert r.completeness_error == engine[v].sum() - targets[v]


def many_paths():
    """Paths of different difficulty and head counts: (heads, targets)."""
    heads, targets = [], []
    for i, eps in enumerate([0.5, 0.05, 0.005, 0.02, 1.0, 0.001]):
        f, exact = peak(eps)
        extra = tuple(lambda a, k=k: np.cos(3 * k * a) for k in range(i % 3))
        heads.append((f, *extra))
        targets.append(exact + sum(np.sin(3 * k) / (3 * k) if k else 1.0 for k in range(i % 3)))
    return heads, targets


def test_each_path_is_independent_of_the_others_and_of_batching():
    heads, targets = many_paths()
    evaluate, calls = counting(vector_integrand(*heads))
    together = integrate_paths(evaluate, targets, steps=4, tol=1e-3)
    assert all(len(c) == len({p for p, _ in c}) for c in calls)  # one request per path and round
    assert len(calls) > 2 and [p for p, _ in calls[-1]] != list(range(len(targets)))  # easy paths stopped early

    def chunked(requests, size=3):
        # a caller that evaluates the alphas in batches of 3 rows across requests, then hands them back
        rows = [(i, a) for i, (p, alphas) in enumerate(requests) for a in alphas]
        out = [[] for _ in requests]
        for s in range(0, len(rows), size):
            for i, a in rows[s : s + size]:
                out[i].append(vector_integrand(*heads)([(requests[i][0], np.array([a]))])[0][0])
        return [np.array(o) for o in out]

    batched = integrate_paths(chunked, targets, steps=4, tol=1e-3)
    for p, target in enumerate(targets):
        alone = integrate_paths(vector_integrand(heads[p]), [target], steps=4, tol=1e-3)[0]
        for r in (alone, batched[p]):
            assert r.integral.tobytes() == together[p].integral.tobytes() and r.nodes == together[p].nodes
            assert r.error_estimate == together[p].error_estimate


def test_deterministic():
    heads, targets = many_paths()
    a = integrate_paths(vector_integrand(*heads), targets, steps=8, tol=1e-4)
    b = integrate_paths(vector_integrand(*heads), targets, steps=8, tol=1e-4)
    assert [(r.integral.tobytes(), r.nodes, r.error_estimate) for r in a] == [
        (r.integral.tobytes(), r.nodes, r.error_estimate) for r in b
    ]


@pytest.mark.parametrize("max_steps", [8, 20, 64, 256])
def test_max_steps_is_respected(max_steps):
    f, exact = peak(1e-5)  # needs far more than max_steps nodes
    (r,) = integrate_paths(vector_integrand((f,)), [exact], steps=4, tol=1e-8, atol=0.0, max_steps=max_steps)
    assert r.nodes <= max_steps and r.nodes + 2 > max_steps  # stopped because one more split would pass it


def test_riemann_rules_are_never_refined():
    f, exact = peak(0.01)
    evaluate, calls = counting(vector_integrand((f,)))
    (r,) = integrate_paths(evaluate, [exact], steps=8, tol=0.01, rule="riemann-right")
    assert r.nodes == 8 and len(calls) == 1 and np.isnan(r.error_estimate)
    assert abs(r.completeness_error) > 0.1  # far outside the tolerance, yet not refined


def test_bad_arguments():
    evaluate = vector_integrand((np.cos,))
    with pytest.raises(ValueError, match="steps"):
        integrate_paths(evaluate, [1.0], steps=8, max_steps=4)
    with pytest.raises(ValueError, match="tolerances"):
        integrate_paths(evaluate, [1.0], steps=8, tol=-1.0)
    with pytest.raises(ValueError, match="expected"):
        integrate_paths(lambda reqs: [np.zeros(3) for _ in reqs], [1.0], steps=8)


def test_a_noisy_integrand_stops_at_its_noise_floor_instead_of_the_cap():
    # rounding noise (bf16 products) of relative size 1e-2 on top of a smooth integrand: every split changes the
    # value by the noise, so the estimate never falls below it and, without a floor, the path runs to the cap
    rng = np.random.default_rng(0)

    def noisy(a):
        return np.cos(3 * a) * (1 + 1e-2 * rng.standard_normal(np.shape(a)))

    exact = np.sin(3.0) / 3
    (capped,) = integrate_paths(vector_integrand((noisy,)), [exact], steps=3, tol=1e-4, atol=0.0, max_steps=256)
    assert capped.nodes + 2 > 256 and not capped.at_floor
    (r,) = integrate_paths(vector_integrand((noisy,)), [exact], steps=3, tol=1e-4, atol=0.0, noise=4e-2)
    assert r.at_floor and r.nodes < 64
    assert abs(r.completeness_error) <= 4e-2 * 0.7 and abs(r.integral[0] - exact) <= 4e-2 * 0.7  # int |cos 3a| ~ 0.68


def test_a_zero_noise_floor_changes_nothing():
    f, exact = peak(0.01)
    a = integrate_paths(vector_integrand((f,)), [exact], steps=3, tol=1e-3, atol=0.0)
    b = integrate_paths(vector_integrand((f,)), [exact], steps=3, tol=1e-3, atol=0.0, noise=0.0)
    assert a[0].integral.tobytes() == b[0].integral.tobytes() and a[0].nodes == b[0].nodes and not b[0].at_floor
