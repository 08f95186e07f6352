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


def test_ngram_repetition_on_hand_made_strings():
    from opo.metrics import max_ngram_count, ngram_repetition, repetition_metrics

    fresh = "the cat sat on the mat today".split()
    assert ngram_repetition(fresh, 2) == 0.0 and max_ngram_count(fresh, 2) == 1
    loop = "a b a b a b".split()  # bigrams ab ba ab ba ab: 2 distinct of 5
    assert ngram_repetition(loop, 2) == pytest.approx(1 - 2 / 5)
    assert max_ngram_count(loop, 2) == 3
    assert ngram_repetition("x y".split(), 4) == 0.0 and max_ngram_count("x y".split(), 4) == 0
    same = ["7"] * 10  # one 4-gram, 7 times
    assert ngram_repetition(same, 4) == pytest.approx(6 / 7) and max_ngram_count(same, 4) == 7
    m = repetition_metrics([fresh, loop, same], n=2, min_count=3)
    assert m["repetition/degenerate"] == pytest.approx(2 / 3)  # loop (3x 'a b') and same
    assert m["repetition/ngram_frac"] == pytest.approx((0 + 3 / 5 + 8 / 9) / 3)
    assert repetition_metrics([[1, 2, 3, 4, 1, 2, 3, 4]], n=4, min_count=3)["repetition/degenerate"] == 0.0
    assert repetition_metrics([], 4, 3) == {"repetition/ngram_frac": 0.0, "repetition/degenerate": 0.0}


def test_a_tracker_mirrors_numbers_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from opo.metrics import JsonlLogger
    from opo.tracking import TensorBoardWriter, Tracker

    log = Tracker(JsonlLogger(tmp_path / "m.jsonl"), (TensorBoardWriter(tmp_path / "tb"),))
    log.log({"step": 1, "reward/mean": 0.25, "note": "text", "flag": True})
    log.log({"step": 2, "reward/mean": 0.5})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["reward/mean"]
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.5)]
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
