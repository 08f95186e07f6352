import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opo.algos.advantages import ADVANTAGES, extras_for, masked_whiten


def mask_of(lengths, width=None):
    width = width or max(lengths)
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


def seq(adv, mask):
    """Per-sequence advantage of estimators that broadcast one value over the response."""
    return (adv * mask).sum(-1) / mask.sum(-1)


R = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0])
L = [2, 4, 1, 3, 2]
G = torch.tensor([7, 7, 7, 7, 9])  # a group of 4 and a group of size 1


def test_opo_hand_computed():
    # group 7: b = (2*1 + 4*0 + 1*1 + 3*0) / (2+4+1+3) = 0.3; group 9 has size 1: b = 0
    adv = ADVANTAGES.get("opo")(R, mask_of(L), G)
    assert torch.allclose(seq(adv, mask_of(L)), torch.tensor([0.7, -0.3, 0.7, -0.3, 5.0]))
    assert torch.all(adv[mask_of(L) == 0] == 0)


def test_opo_batch_hand_computed():
    # b = (2 + 0 + 1 + 0 + 10) / 12 = 13/12 over the whole batch
    adv = ADVANTAGES.get("opo_batch")(R, mask_of(L), G)
    assert torch.allclose(seq(adv, mask_of(L)), R - 13 / 12)


def test_grpo_hand_computed():
    # group 7: mean 0.5, unbiased std sqrt(1/3); size 1: mean 0, std 1
    adv = ADVANTAGES.get("grpo")(R, mask_of(L), G)
    s = (1 / 3) ** 0.5
    want = torch.tensor([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 5.0 / (1 + 1e-6)])
    assert torch.allclose(seq(adv, mask_of(L)), want)


def test_grpo_equal_rewards_give_zero():
    adv = ADVANTAGES.get("grpo")(torch.ones(3), mask_of([1, 2, 3]), torch.zeros(3))
    assert torch.all(adv == 0)


def test_dr_grpo_hand_computed():
    adv = ADVANTAGES.get("dr_grpo")(R, mask_of(L), G)
    assert torch.allclose(seq(adv, mask_of(L)), torch.tensor([0.5, -0.5, 0.5, -0.5, 5.0]))


def test_rloo_hand_computed():
    # r_i - mean of the other three: 1 - 1/3, 0 - 2/3, ...; size 1 keeps r
    adv = ADVANTAGES.get("rloo")(R, mask_of(L), G)
    assert torch.allclose(seq(adv, mask_of(L)), torch.tensor([2 / 3, -2 / 3, 2 / 3, -2 / 3, 5.0]))


def test_reinforce_pp_hand_computed():
    # gamma 0.5: returns of row 0 (len 2, r=1) are [0.5, 1]; row 1 (len 1, r=0) is [0]
    scores, mask = torch.tensor([1.0, 0.0]), mask_of([2, 1])
    adv = ADVANTAGES.get("reinforce_pp")(scores, mask, torch.tensor([0, 1]), gamma=0.5)
    vals = torch.tensor([0.5, 1.0, 0.0])
    want = (vals - vals.mean()) / (vals.var(unbiased=True) + 1e-8).sqrt()
    assert torch.allclose(adv[mask.bool()], want, atol=1e-6)
    assert adv[1, 1] == 0


def test_reinforce_pp_baseline_hand_computed():
    scores, mask = torch.tensor([1.0, 0.0, 3.0]), mask_of([1, 2, 1])
    adv = ADVANTAGES.get("reinforce_pp_baseline")(scores, mask, torch.tensor([0, 0, 1]))
    vals = torch.tensor([0.5, -0.5, -0.5, 3.0])  # group means removed (size 1 keeps 3), broadcast per token
    want = (vals - vals.mean()) / (vals.var(unbiased=True) + 1e-8).sqrt()
    assert torch.allclose(adv[mask.bool()], want, atol=1e-6)


def test_whiten_single_entry_is_zero():
    mask = mask_of([1], 2)
    assert torch.all(masked_whiten(torch.tensor([[3.0, 9.0]]), mask) * mask == 0)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_zero_outside_mask_and_shape(name):
    mask = mask_of([3, 1, 2, 2])
    fn = ADVANTAGES.get(name)
    extras = extras_for(fn, {"modes": torch.tensor([1, 0, 0, 1]), "tag_mask": torch.ones_like(mask)})
    adv = fn(torch.tensor([1.0, 0.0, 0.5, 1.0]), mask, torch.tensor([0, 0, 1, 1]), **extras)
    assert adv.shape == mask.shape and torch.all(adv[mask == 0] == 0)


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.tuples(st.floats(-10, 10), st.integers(1, 20)), min_size=2, max_size=8), min_size=1, max_size=5
    )
)
def test_opo_length_weighted_advantages_sum_to_zero(groups):
    # OPO identity (arXiv 2505.23585): sum_i l_i A_i = 0 in every group of size > 1.
    scores = torch.tensor([r for g in groups for r, _ in g], dtype=torch.float64)
    lengths = [l for g in groups for _, l in g]
    gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    mask = mask_of(lengths).double()
    adv = ADVANTAGES.get("opo")(scores, mask, gids)
    per_group = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, gids, adv.sum(-1))
    assert torch.allclose(per_group, torch.zeros_like(per_group), atol=1e-9)


def test_unknown_estimator_names_the_known_ones():
    with pytest.raises(KeyError, match="known: .*opo"):
        ADVANTAGES.get("nope")
