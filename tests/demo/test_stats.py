"""Study statistics against scipy (an independent implementation) and hand-computed cases."""

from __future__ import annotations

import math

import pytest

from llava.demo.stats import (
    Summary,
    betainc,
    compare,
    holm,
    mean_ci,
    paired_test,
    t_cdf,
    t_ppf,
    welch_test,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (1.0, 0.5, 0.9), (10.0, 0.5, 0.2), (2.5, 7.0, 0.6)])
def test_betainc_matches_scipy(a, b, x):
    assert betainc(a, b, x) == pytest.approx(float(scipy_special.betainc(a, b, x)), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 3, 4.7, 30])
def test_t_distribution_matches_scipy(df):
    for t in (-5.0, -1.3, 0.0, 0.4, 2.9, 12.0):
        assert t_cdf(t, df) == pytest.approx(float(scipy_stats.t.cdf(t, df)), abs=1e-12)
    for q in (0.025, 0.5, 0.9, 0.975, 0.999):
        assert t_ppf(q, df) == pytest.approx(float(scipy_stats.t.ppf(q, df)), rel=1e-9, abs=1e-12)


def test_mean_ci_is_the_t_interval_and_counts_diverged_runs():
    values = [3.1, 2.4, 4.0]
    s = mean_ci(values + [math.nan, None])
    sem = scipy_stats.sem(values)
    assert s.mean == pytest.approx(sum(values) / 3)
    assert s.half_width == pytest.approx(scipy_stats.t.ppf(0.975, 2) * sem, rel=1e-9)
    assert (s.n, s.n_nonfinite) == (3, 2)
    assert s.format() == f"{s.mean:.1f} ± {s.half_width:.1f} (2 diverged)"
    assert mean_ci([7.0]).format() == "7.0"  # one seed: no interval
    assert mean_ci([math.inf]).format() == "n/a (1 diverged)"
    assert isinstance(mean_ci([]), Summary) and mean_ci([]).n == 0


def test_paired_and_welch_tests_match_scipy():
    a = {0: 1.20, 1: 1.31, 2: 1.17, 3: 1.25}
    b = {0: 1.28, 1: 1.35, 2: 1.29, 3: 1.30}
    res = paired_test(a, b)
    ref = scipy_stats.ttest_rel(list(a.values()), list(b.values()))
    assert res.test == "paired" and res.n == 4
    assert res.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert res.diff == pytest.approx(sum(a.values()) / 4 - sum(b.values()) / 4)
    xa, xb = [2.0, 2.4, 1.9, 2.2], [2.9, 3.5, 2.6]
    w = welch_test(xa, xb)
    wref = scipy_stats.ttest_ind(xa, xb, equal_var=False)
    assert w.test == "welch" and w.p == pytest.approx(wref.pvalue, rel=1e-8)


def test_compare_pairs_by_seed_and_falls_back_to_welch():
    a = {0: 1.0, 1: 1.1, 2: math.nan}  # seed 2 diverged
    b = {0: 1.3, 1: 1.5, 2: 1.4}
    assert compare(a, b).test == "paired" and compare(a, b).n == 2
    c = {5: 1.0, 6: 1.2}  # other seeds: nothing pairs up
    assert compare(c, b).test == "welch"
    assert compare({0: 1.0}, {0: 2.0}).test == "none"


def test_holm_adjustment():
    # m = 4: sorted p = .01, .02, .03, .5 -> .04, .06, .06 (monotone), .5
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    out = holm([math.nan, 0.2])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.2)
