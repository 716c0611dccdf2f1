"""Coverage of `compare`'s jackknife intervals on synthetic pairs of runs from a known model.

Per-sample scores = true head effects + noise (normal, its standard deviation differing by head). The
target of an interval is the expected between-run statistic at the runs' sample counts: the mean of the
statistic over `--truth-reps` independent pairs of runs. Prints, for each statistic, the share of
`--reps` seeded replications whose 95% interval covers it.

    python benchmarks/interval_coverage.py [--reps 200] [--n 20] [--truth-reps 4000]
"""

from __future__ import annotations

import argparse

import numpy as np

from headattr.analysis.uncertainty import INTERVAL_STATISTICS, _interval_statistics, pair_intervals

LAYERS, HEADS = 6, 8


def model(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """True effects [L, H] (layer scales 0.3 to 2) and per-head noise standard deviations [L, H]."""
    rng = np.random.default_rng(seed)
    effects = rng.standard_normal((LAYERS, HEADS)) * np.linspace(0.3, 2.0, LAYERS)[:, None]
    sigma = rng.uniform(2.0, 6.0, size=(LAYERS, HEADS))
    return effects, sigma


def draw(rng: np.random.Generator, n: int, effects: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """One run's per-sample scores [n, L, H]."""
    return effects[None] + sigma[None] * rng.standard_normal((n, *effects.shape))


def expected(n_a: int, n_b: int, reps: int, seed: int = 12345) -> dict[str, float]:
    """The mean of each statistic over `reps` pairs of runs (the intervals' target)."""
    effects, sigma = model()
    rng = np.random.default_rng(seed)
    a = np.stack([draw(rng, n_a, effects, sigma).mean(0).ravel() for _ in range(reps)])
    b = np.stack([draw(rng, n_b, effects, sigma).mean(0).ravel() for _ in range(reps)])
    values = _interval_statistics(a, b, (LAYERS, HEADS), list(range(LAYERS)))
    return {k: float(np.mean(v)) for k, v in values.items()}


def coverage(reps: int, n_a: int, n_b: int, truth: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Share of `reps` seeded replications whose interval covers `truth`, per statistic."""
    effects, sigma = model()
    hits = dict.fromkeys(INTERVAL_STATISTICS, 0)
    for rep in range(reps):
        rng = np.random.default_rng([seed, rep])
        intervals = pair_intervals(draw(rng, n_a, effects, sigma), draw(rng, n_b, effects, sigma))
        for k, iv in intervals.items():
            hits[k] += iv.low <= truth[k] <= iv.high
    return {k: h / reps for k, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n", type=int, default=20, help="samples per run")
    parser.add_argument("--truth-reps", type=int, default=4000)
    args = parser.parse_args()
    truth = expected(args.n, args.n, args.truth_reps)
    cov = coverage(args.reps, args.n, args.n, truth)
    for k in INTERVAL_STATISTICS:
        print(f"{k:<22} expected {truth[k]:.4f}  coverage of the 95% interval {cov[k]:.3f} ({args.reps} replications)")


if __name__ == "__main__":
    main()
