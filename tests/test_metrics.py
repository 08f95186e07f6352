import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opo.metrics import majority_vote, pass_at_k


@given(st.data())
def test_pass_at_k_equals_enumeration_over_subsets(data):
    n = data.draw(st.integers(1, 9))
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), brute, abs_tol=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(8, 0, 4) == 0.0 and pass_at_k(8, 8, 1) == 1.0 and pass_at_k(4, 1, 1) == 0.25
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None], [False, True, True, False])
    assert not majority_vote(["3", "4", "3"], [False, True, False])
    assert majority_vote(["4", "3"], [True, False])  # tie: the first-seen answer wins
    assert not majority_vote(["3", "4"], [False, True])
    assert not majority_vote([None, None], [False, False])
