import math

import pytest
import torch

from opo.algos.losses import KL_ESTIMATORS, POLICY_LOSSES, aggregate


def test_ppo_clip_gradient_equals_pg_when_ratio_is_one():
    logits = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3, 5)
    grads = []
    for name, old in (("pg", None), ("ppo_clip", "detached")):
        logp = torch.log_softmax(logits, -1)
        old_logp = logp.detach() if old else None
        params = {"clip_low": 0.2, "clip_high": 0.28} if name == "ppo_clip" else {}
        loss, clipped = POLICY_LOSSES.get(name)(logp, old_logp, adv, **params)
        assert not clipped.any()
        (g,) = torch.autograd.grad(loss.sum(), logits)
        grads.append(g)
    assert torch.allclose(grads[0], grads[1])
    # and it is the REINFORCE gradient -A * grad log pi
    logp = torch.log_softmax(logits, -1)
    (want,) = torch.autograd.grad((-adv * logp).sum(), logits)
    assert torch.allclose(grads[0], want)


def test_ppo_clip_hand_computed():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = POLICY_LOSSES.get("ppo_clip")(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0, r=1.5 clipped to 1.28; A>0, r=0.5 unclipped (min); A<0, r=1.5 unclipped; A<0, r=0.5 clipped to 0.8
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, 1.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]
    (g,) = torch.autograd.grad(loss.sum(), logp)
    assert g[0, 0] == 0 and g[0, 3] == 0 and g[0, 1] != 0


def test_dual_clip_caps_negative_advantage_loss():
    loss, clipped = POLICY_LOSSES.get("ppo_clip")(
        torch.log(torch.tensor([[10.0]])), torch.zeros(1, 1), torch.tensor([[-1.0]]), dual_clip=3.0
    )
    assert loss.item() == pytest.approx(3.0) and clipped.all()


def test_kl_estimators_match_closed_form():
    p = torch.tensor([0.2, 0.5, 0.3])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())  # KL(p || q)
    lp, lq = p.log(), q.log()
    for name in ("k1", "k3"):  # unbiased: E_p[k] = KL
        assert float((p * KL_ESTIMATORS.get(name)(lp, lq)).sum()) == pytest.approx(exact, rel=1e-5)
    k2 = float((p * KL_ESTIMATORS.get("k2")(lp, lq)).sum())
    assert k2 == pytest.approx(0.5 * float((p * (lp - lq) ** 2).sum()))
    assert torch.all(KL_ESTIMATORS.get("k3")(lp, lq) >= 0)
    assert math.isclose(float(KL_ESTIMATORS.get("k3")(lp, lp).abs().max()), 0.0)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_aggregation_is_additive_over_micro_batches(mode):
    loss = torch.randn(6, 5)
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor([5, 1, 3, 2, 4, 5]).unsqueeze(1)).float()
    n_tok, n_seq = float(mask.sum()), 6.0
    full = aggregate(loss, mask, mode, n_tok, n_seq)
    split = sum(aggregate(loss[i : i + 2], mask[i : i + 2], mode, n_tok, n_seq) for i in range(0, 6, 2))
    assert torch.allclose(full, split)
    ref = {
        "token-mean": (loss * mask).sum() / mask.sum(),
        "seq-mean-token-mean": ((loss * mask).sum(-1) / mask.sum(-1)).mean(),
        "seq-mean-token-sum": (loss * mask).sum(-1).mean(),
    }[mode]
    assert torch.allclose(full, ref)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "nope", 1, 1)


def test_kl_estimators_against_closed_form_kl_of_categoricals():
    """E_{x~p}[k(log p(x), log q(x))] for k1 and k3 is exactly KL(p || q); k2 is a second-order
    approximation (close for near distributions, never negative)."""
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 3.0):
        logp = torch.log_softmax(scale * torch.randn(7, generator=g, dtype=torch.float64), -1)
        logq = torch.log_softmax(scale * torch.randn(7, generator=g, dtype=torch.float64), -1)
        p = logp.exp()
        closed = float((p * (logp - logq)).sum())
        for name in ("k1", "k3"):
            expected = float((p * KL_ESTIMATORS.get(name)(logp, logq)).sum())
            assert abs(expected - closed) < 1e-12, name
        assert bool((KL_ESTIMATORS.get("k3")(logp, logq) >= 0).all())
        k2 = float((p * KL_ESTIMATORS.get("k2")(logp, logq)).sum())
        assert k2 >= 0 and (scale > 0.1 or abs(k2 - closed) < 0.05 * closed)
    # Monte Carlo: sample means of k1/k3 agree with the closed form within 4 standard errors.
    logp = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    logq = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    closed = float((logp.exp() * (logp - logq)).sum())
    x = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=g)
    for name in ("k1", "k3"):
        k = KL_ESTIMATORS.get(name)(logp[x], logq[x])
        assert abs(float(k.mean()) - closed) < 4 * float(k.std()) / len(k) ** 0.5, name
