"""Statistics of the study: mean ± 95 % t-interval per cell, and tests between variants.

Seeds pair across variants: seed s of every variant fine-tunes on the same 10 % subset in the same
order, so differences between two variants are tested per seed (a paired t-test on the seed-wise
differences); Welch's unequal-variance t-test is the fallback when fewer than two seeds pair up.
With many pairs, p-values are adjusted with Holm's step-down method.

The Student-t distribution is computed here (regularised incomplete beta by continued fraction,
quantiles by bisection), so the study needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


# ------------------------------------------------------------------------------------ distribution
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on `t_cdf`, to ~1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must lie in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Summary:
    """One table cell: mean ± half-width of the t-interval over the finite values."""

    mean: float  # NaN when no value is finite
    half_width: float  # NaN with fewer than 2 finite values
    n: int  # finite values used
    n_nonfinite: int  # values left out (diverged runs), reported beside the cell

    def format(self, digits: int = 1) -> str:
        if self.n == 0:
            text = "n/a"
        elif math.isnan(self.half_width):
            text = f"{self.mean:.{digits}f}"
        else:
            text = f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"
        if self.n_nonfinite:
            text += f" ({self.n_nonfinite} diverged)"
        return text


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values: Sequence[float | None], level: float = 0.95) -> Summary:
    """Mean and the half-width t_{(1+level)/2, n-1} · s / sqrt(n) over the finite values; None and
    non-finite entries (runs that diverged) are counted, not used."""
    xs = _finite(values)
    bad = len(values) - len(xs)
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0, bad)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(mean, math.nan, n, bad)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n), n, bad)


# ------------------------------------------------------------------------------------------ tests
@dataclass(frozen=True)
class Comparison:
    """Difference a − b between two variants and its two-sided test."""

    test: str  # "paired" (per seed) | "welch" | "none" (too few values)
    diff: float  # mean difference a − b
    half_width: float  # 95 % t-interval of the difference (NaN when untestable)
    p: float  # two-sided p-value (NaN when untestable)
    n: int  # pairs (paired) or the smaller sample (welch)


def paired_test(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Comparison:
    """Paired t-test over the seeds both have finite values for (keys are seeds)."""
    seeds = sorted(s for s in set(a) & set(b) if _finite([a[s]]) and _finite([b[s]]))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    if n < 2:
        return Comparison("none", math.fsum(d) / n if n else math.nan, math.nan, math.nan, n)
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
        return Comparison("paired", mean, 0.0, p, n)
    t = mean / (sd / math.sqrt(n))
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    return Comparison("paired", mean, t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n), p, n)


def welch_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    """Welch's t-test (unequal variances, Welch–Satterthwaite degrees of freedom)."""
    xa, xb = _finite(a), _finite(b)
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        diff = (math.fsum(xa) / na - math.fsum(xb) / nb) if na and nb else math.nan
        return Comparison("none", diff, math.nan, math.nan, min(na, nb))
    ma, mb = math.fsum(xa) / na, math.fsum(xb) / nb
    va = math.fsum((x - ma) ** 2 for x in xa) / (na - 1)
    vb = math.fsum((x - mb) ** 2 for x in xb) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return Comparison("welch", ma - mb, 0.0, 1.0 if ma == mb else 0.0, min(na, nb))
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    t = (ma - mb) / math.sqrt(se2)
    p = 2.0 * (1.0 - t_cdf(abs(t), df))
    return Comparison("welch", ma - mb, t_ppf(0.5 + level / 2.0, df) * math.sqrt(se2), p, min(na, nb))


def compare(a: Mapping[int, float], b: Mapping[int, float]) -> Comparison:
    """Paired by seed when at least two seeds pair up, Welch otherwise."""
    result = paired_test(a, b)
    if result.test == "none":
        return welch_test(list(a.values()), list(b.values()))
    return result


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
