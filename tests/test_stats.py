"""Exact statistics against values derived by hand."""

import math

import pytest

from lightning_post.stats import binomial_test, mean_and_se, sign_test


def test_binomial_test_two_sided_by_hand():
    # n=10, p=1/2: P(k) = C(10,k)/1024. k=9 is as extreme as k=0,1,9,10 -> (1+10+10+1)/1024.
    assert binomial_test(9, 10) == pytest.approx(22 / 1024)
    # k=5 is the mode: every outcome is at most as likely -> 1.
    assert binomial_test(5, 10) == pytest.approx(1.0)
    # k=2 of 10: outcomes with C(10,i) <= 45 -> i in {0,1,2,8,9,10}: (1+10+45)*2/1024.
    assert binomial_test(2, 10) == pytest.approx(112 / 1024)


def test_binomial_test_asymmetric_p():
    # n=3, p=0.2: pmf = .512, .384, .096, .008. k=2 -> outcomes no more likely than .096: {2, 3} -> .104.
    assert binomial_test(2, 3, 0.2) == pytest.approx(0.104)
    assert binomial_test(0, 3, 0.2) == pytest.approx(1.0)


def test_binomial_test_rejects_bad_input():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_test(4, 3)
    with pytest.raises(ValueError, match="p must lie"):
        binomial_test(1, 3, 1.5)


def test_sign_test_drops_ties():
    higher, lower, p = sign_test([0.5, 1.0, 0.0, -0.2, 2.0, 3.0])
    assert (higher, lower) == (4, 1)
    assert p == pytest.approx(binomial_test(4, 5)) and p == pytest.approx(12 / 32)


def test_mean_and_se_by_hand():
    mean, se = mean_and_se([1.0, 2.0, 3.0, 6.0])
    # mean 3; squared deviations 4+1+0+9 = 14; variance 14/3; se = sqrt(14/3/4)
    assert mean == 3.0 and se == pytest.approx(math.sqrt(14 / 12))
    assert mean_and_se([2.0]) == (2.0, 0.0)
