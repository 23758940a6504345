"""The tests and effect sizes the judge uses, over plain numbers.

scipy and numpy are imported inside the functions: importing the judge (and so the CLI
and the controller's types) costs nothing until a verdict is computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Pairwise differences of the Hodges-Lehmann estimate grow as n*m: above this many, each
# sample is first thinned to evenly spaced order statistics (deterministic, and the
# median of differences barely moves).
MAX_PAIRS = 4_000_000


def fisher_greater(
    canary_errors: int, canary_n: int, baseline_errors: int, baseline_n: int
) -> float:
    """One-sided p-value of Fisher's exact test that the canary's error ratio exceeds the
    baseline's. Exact at any count, and well defined when the baseline has no errors
    (no ratio of rates is ever divided)."""
    from scipy.stats import fisher_exact

    table = [
        [canary_errors, canary_n - canary_errors],
        [baseline_errors, baseline_n - baseline_errors],
    ]
    return _p(fisher_exact(table, alternative="greater").pvalue)


def binomial_p(successes: int, trials: int, p: float, alternative: str) -> float:
    """Exact binomial test of `successes` in `trials` against probability `p`
    (`alternative` "greater" or "less")."""
    from scipy.stats import binomtest

    return _p(binomtest(successes, trials, p, alternative=alternative).pvalue)


def mann_whitney_greater(canary: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that canary points are stochastically
    greater (slower) than baseline points."""
    from scipy.stats import mannwhitneyu

    return _p(mannwhitneyu(canary, baseline, alternative="greater").pvalue)


def hodges_lehmann_shift(canary: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of all pairwise differences canary - baseline: the shift estimate that
    goes with the Mann-Whitney test, robust to the odd outlying point."""
    import numpy as np

    x = np.sort(np.asarray(canary, dtype=float))
    y = np.sort(np.asarray(baseline, dtype=float))
    if x.size * y.size > MAX_PAIRS:
        keep = int(math.sqrt(MAX_PAIRS))
        x = _thin(x, keep)
        y = _thin(y, keep)
    return float(np.median(np.subtract.outer(x, y)))


def median(values: Sequence[float]) -> float:
    import numpy as np

    return float(np.median(np.asarray(values, dtype=float)))


def quantile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(values, dtype=float), q))


def _thin(ordered: npt.NDArray[np.float64], keep: int) -> npt.NDArray[np.float64]:
    import numpy as np

    if ordered.size <= keep:
        return ordered
    picked: npt.NDArray[np.float64] = ordered[
        np.linspace(0, ordered.size - 1, keep).round().astype(int)
    ]
    return picked


def _p(value: Any) -> float:
    """A p-value as a float; a test that cannot tell (NaN, e.g. every point tied) is 1."""
    number = float(value)
    return 1.0 if math.isnan(number) else min(1.0, max(0.0, number))
