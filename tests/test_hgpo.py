"""HGPO advantages (arXiv 2505.14631, Eq. 9-10) against hand-computed values."""

import pytest
import torch

from opo.algos.advantages import ADVANTAGES, extras_for, hgpo_rewards
from opo.config import ConfigError, load_config

S3 = (1 / 3) ** 0.5  # unbiased std of [1, 1, 0, 0]


def mask_of(lengths, width=None):
    width = width or max(lengths)
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


def tag_first(mask):
    tag = torch.zeros_like(mask)
    tag[:, 0] = 1.0
    return tag


def hgpo(scores, lengths, modes, groups=None, name="hgpo", tag=None, **params):
    mask = mask_of(lengths)
    groups = torch.zeros(len(scores), dtype=torch.long) if groups is None else torch.tensor(groups)
    return ADVANTAGES.get(name)(torch.tensor(scores), mask, groups, modes=torch.tensor(modes),
                                tag_mask=tag_first(mask) if tag is None else tag, **params)


def test_rewards_no_think_wins_and_a_half_at_its_maximum_all_get_one():
    # thinking [1, 0] (mean 0.5) vs not [1, 1] (mean 1): not thinking wins; both no-think responses are best
    inter, intra = hgpo_rewards(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.zeros(4, dtype=torch.long),
                                torch.tensor([1, 1, 0, 0]))
    assert inter.tolist() == [0, 0, 1, 1]
    assert intra.tolist() == [1, 0, 1, 1]


@pytest.mark.parametrize("margin, think_wins", [(0.2, True), (0.5, False), (0.6, False)])
def test_margin_favours_not_thinking(margin, think_wins):
    # R_think = 1, R_no = 0.5: thinking wins iff 1 > 0.5 + margin (equality is a tie: not thinking)
    inter, _ = hgpo_rewards(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.zeros(4, dtype=torch.long),
                            torch.tensor([1, 1, 0, 0]), margin=margin)
    assert inter.tolist() == ([1, 1, 0, 0] if think_wins else [0, 0, 1, 1])


def test_tie_goes_to_not_thinking():
    inter, intra = hgpo_rewards(torch.ones(4), torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1]), margin=0.0)
    assert inter.tolist() == [1, 0, 1, 0]
    assert intra.tolist() == [1, 1, 1, 1]


def test_grpo_form_hand_computed():
    # intra [1, 0, 1, 1]: mean 0.75, unbiased std 0.5 -> [0.5, -1.5, 0.5, 0.5]
    # inter [0, 0, 1, 1]: mean 0.5, std sqrt(1/3) -> -/+ 0.5 / sqrt(1/3), on the tag token only
    adv = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0])
    m = 0.5 / S3
    assert torch.allclose(adv[:, 0], torch.tensor([0.5 - m, -1.5 - m, 0.5 + m, 0.5 + m]), atol=1e-5)
    assert torch.allclose(adv[0, 1:3], torch.tensor([0.5, 0.5]), atol=1e-5)
    assert torch.allclose(adv[1, 1:5], torch.full((4,), -1.5), atol=1e-5)
    assert torch.all(adv[mask_of([3, 5, 2, 2]) == 0] == 0)


def test_alpha_zero_leaves_no_mode_signal():
    adv = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0], alpha=0.0)
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, -1.5, 0.5, 0.5]), atol=1e-5)


def test_alpha_scales_the_tag_term_only():
    base = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0], alpha=0.0)
    two = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0], alpha=2.0)
    assert torch.allclose((two - base)[:, 0], 2 * torch.tensor([-1, -1, 1, 1]) * 0.5 / S3, atol=1e-5)
    assert torch.equal((two - base)[:, 1:], torch.zeros_like(base[:, 1:]))


def test_equal_rewards_everywhere_train_only_the_mode_choice():
    # every response correct: intra is 1 everywhere (no signal); the tie sends the tag to not thinking
    adv = hgpo([1.0, 1.0, 1.0, 1.0], [2, 3, 2, 2], [1, 1, 0, 0])
    assert torch.allclose(adv[:, 1:], torch.zeros(4, 2))
    assert torch.allclose(adv[:, 0], torch.tensor([-1, -1, 1, 1]) * 0.5 / S3, atol=1e-5)


def test_tag_token_placement_follows_tag_mask():
    mask = mask_of([3, 3, 3, 3])
    tag = torch.zeros_like(mask)
    tag[:, 1] = 1.0  # the tag after one forced token
    shifted = hgpo([1.0, 0.0, 1.0, 1.0], [3, 3, 3, 3], [1, 1, 0, 0], tag=tag)
    first = hgpo([1.0, 0.0, 1.0, 1.0], [3, 3, 3, 3], [1, 1, 0, 0])
    assert torch.allclose(shifted[:, 1], first[:, 0]) and torch.allclose(shifted[:, 0], first[:, 2])


def test_groups_are_independent():
    one = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0])
    two = hgpo([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0], [3, 5, 2, 2, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1, 0, 0],
               groups=[4, 4, 4, 4, 9, 9, 9, 9])
    assert torch.allclose(two[:4, :5], one)
    # group 9: thinking [0, 0] vs not [1, 0]: not thinking wins; intra [1, 1, 1, 0]
    assert torch.allclose(two[4:, 0], torch.tensor([0.5 - 0.5 / S3, 0.5 - 0.5 / S3, 0.5 + 0.5 / S3, -1.5 + 0.5 / S3]),
                          atol=1e-5)


def test_opo_form_hand_computed():
    # intra [1, 0, 1, 1] with lengths [3, 5, 2, 2]: b = (3 + 0 + 2 + 2) / 12 = 7/12; inter baseline 0.5 on the tag
    adv = hgpo([1.0, 0.0, 1.0, 1.0], [3, 5, 2, 2], [1, 1, 0, 0], name="hgpo_opo")
    intra = torch.tensor([5 / 12, -7 / 12, 5 / 12, 5 / 12])
    assert torch.allclose(adv[:, 0], intra + torch.tensor([-0.5, -0.5, 0.5, 0.5]))
    assert torch.allclose(adv[1, 1:5], intra[1].expand(4))
    lengths = mask_of([3, 5, 2, 2]).sum(-1)
    assert abs(float((lengths * intra).sum())) < 1e-6  # OPO's baseline: length-weighted advantages sum to 0


def test_a_group_without_both_modes_is_refused():
    with pytest.raises(ValueError, match="both thinking modes"):
        hgpo([1.0, 0.0], [2, 2], [1, 1])


def test_extras_reach_only_estimators_that_declare_them():
    extras = {"modes": torch.tensor([1, 0]), "tag_mask": torch.ones(2, 1)}
    assert extras_for(ADVANTAGES.get("grpo"), extras) == {}
    assert set(extras_for(ADVANTAGES.get("hgpo"), extras)) == {"modes", "tag_mask"}
    with pytest.raises(ValueError, match="hybrid.enabled=true"):
        extras_for(ADVANTAGES.get("hgpo"), {})


@pytest.mark.parametrize("params, message", [({"alpha": -1}, "alpha must be >= 0"), ({"margin": -0.1}, "margin"),
                                             ({"beta": 1}, "takes: ")])
def test_bad_params_fail_at_config_time(params, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["algo.advantage=hgpo", f"algo.advantage_params={params}", "hybrid.enabled=true"])
