import copy
from collections import Counter

import pytest
import torch

from opo.algos.advantages import ADVANTAGES
from opo.config import Config
from opo.rollout.hf import HFEngine
from opo.update import Scoring, StepData, micro_batches, policy_update, record_logprobs


def step_data(model, tok, n_prompts=4, k=3, temperature=1.0):
    prompts = [[1, 5 + i, 6, 7 + 2 * i][: 2 + i % 3] for i in range(n_prompts)]
    batch = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, "fp32", seed=1).generate(
        prompts, list(range(n_prompts)), k, 6, temperature
    )
    plist, gi = batch.prompts()
    ids, mask, logp = batch.completion_tensors(tok.pad_token_id)
    rewards = torch.rand(len(batch))
    adv = ADVANTAGES.get("opo")(rewards, mask, batch.group_ids())
    return StepData(plist, gi, ids, mask, logp, adv, tok.pad_token_id)


def cfg_for(**overrides):
    cfg = Config()
    cfg.run.precision = "fp32"
    cfg.optim.grad_clip = 0.0
    for k, v in overrides.items():
        cfg.set(k, v)
    return cfg.validate()


def scoring_of(cfg):
    return Scoring(cfg.rollout.temperature, cfg.run.precision, cfg.model.fp32_head, cfg.train.micro_batch_tokens)


def update(model, optimizer, cfg, data, **kwargs):
    """``policy_update`` with the arguments ``opo train`` derives from ``cfg``."""
    return policy_update(model, optimizer, data, cfg.algo, scoring_of(cfg), cfg.optim.grad_clip, **kwargs)


def sgd_delta(model, cfg, data):
    m = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    metrics = update(m, torch.optim.SGD(m.parameters(), lr=1.0), cfg, data)
    return {n: p.detach() - before[n] for n, p in m.named_parameters()}, metrics


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batched_gradient_equals_full_batch(tiny, aggregation):
    model, tok = tiny
    data = step_data(model, tok)
    full, m_full = sgd_delta(model, cfg_for(**{"train.micro_batch_tokens": 100000, "algo.aggregation": aggregation}), data)
    split, m_split = sgd_delta(model, cfg_for(**{"train.micro_batch_tokens": 1, "algo.aggregation": aggregation}), data)
    assert m_full["micro_batches"] == 1 and m_split["micro_batches"] == 4
    for n in full:
        assert torch.allclose(full[n], split[n], atol=1e-6, rtol=1e-4), n
    assert any(float(d.abs().max()) > 0 for d in full.values())


def plain_logprobs(model, data, temperature, rows=None):
    """Per-sample log-probs ``(L_i,)`` of the completion tokens of ``rows`` (default: all) from one
    full forward of prompt + completion each: no shared prompt cache, buckets or chunked head."""
    out = {}
    for i in range(len(data.group_index)) if rows is None else rows:
        prompt = data.prompts[int(data.group_index[i])]
        completion = data.completions[i, : int(data.mask[i].sum())]
        ids = torch.cat([torch.tensor(prompt), completion]).unsqueeze(0)
        logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (L_i, V): the positions predicting the completion
        out[i] = (logits / temperature).log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    return out


def test_on_policy_step_follows_the_policy_gradient_of_the_tempered_policy(tiny):
    # SGD with lr 1 moves the weights by -grad(loss), loss = -(1/N_tok) sum_i sum_t A_it log pi(y_it | ...),
    # with pi the tempered policy the batch was sampled from. In float64 the opo step and the plain
    # reference agree to ~1e-7 relative (measured 7e-8: transformers' RMSNorm rounds to fp32 even in a
    # float64 model); a sign, scale or temperature error is off by O(1).
    model, tok = tiny
    temperature = 0.7
    data = step_data(model, tok, temperature=temperature)
    assert data.advantages.abs().sum() > 0 and data.advantages[data.mask.bool()].unique().numel() > 2
    model64 = copy.deepcopy(model).double()
    model64.set_attn_implementation("sdpa")  # float64 eager attention gives NaN on left-padding rows
    cfg = cfg_for(**{"algo.loss": "pg", "algo.aggregation": "token-mean", "rollout.temperature": temperature,
                     "train.micro_batch_tokens": 40})
    delta, _ = sgd_delta(model64, cfg, data)

    reference = copy.deepcopy(model64)
    logp = plain_logprobs(reference, data, temperature)
    n_tok = float(data.mask.sum())
    adv = data.advantages.double()
    loss = -sum((adv[i, : len(lp)] * lp).sum() for i, lp in logp.items()) / n_tok
    params = dict(reference.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    for n, d in delta.items():
        expected = -grads[n]
        assert d.dtype == torch.float64
        assert float((d - expected).abs().max()) <= 1e-6 * float(expected.abs().max()), n
    assert float(delta["model.embed_tokens.weight"].abs().max()) > 0


def test_micro_batches_keep_groups_whole(tiny):
    model, tok = tiny
    data = step_data(model, tok, n_prompts=5)
    mbs = micro_batches(data, list(range(5)), token_budget=30)
    assert sorted(g for mb in mbs for g in mb) == list(range(5))


def count_decoder_calls(model):
    calls = {"grad": 0, "no_grad": 0}

    def hook(module, args, kwargs):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1

    handle = model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


def test_exact_on_policy_runs_one_forward_per_micro_batch_and_no_extra_pass(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    m = copy.deepcopy(model)
    calls, handle = count_decoder_calls(m)
    cfg = cfg_for(**{"train.micro_batch_tokens": 40})
    metrics = update(m, torch.optim.SGD(m.parameters(), lr=0.0), cfg, data)
    handle.remove()
    n_mb = len(micro_batches(data, list(range(4)), 40))
    assert n_mb > 1
    assert metrics["passes/train_forward"] == n_mb and metrics["optimizer_steps"] == 1
    assert "passes/old_logprob" not in metrics and "passes/reference" not in metrics
    # One policy forward per micro-batch = its shared prompt pass + its completion pass, both with grad.
    assert calls == {"grad": 2 * n_mb, "no_grad": 0}
    assert metrics["clip_frac"] == 0.0


def test_off_policy_records_old_logprobs_and_steps_per_mini_batch(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    m = copy.deepcopy(model)
    lr, clip_low, clip_high = 3.0, 0.2, 0.28
    cfg = cfg_for(**{"algo.loss": "ppo_clip", "algo.mini_batches": 2, "algo.ppo_epochs": 2, "train.micro_batch_tokens": 100000,
                     "algo.loss_params": {"clip_low": clip_low, "clip_high": clip_high}})
    hand = copy.deepcopy(model).double()
    optimizer = torch.optim.SGD(m.parameters(), lr=lr)
    after_step = []
    optimizer.register_step_post_hook(lambda *_: after_step.append([p.detach().clone() for p in m.parameters()]))
    metrics = update(m, optimizer, cfg, data, generator=torch.Generator().manual_seed(0))
    assert metrics["passes/old_logprob"] == 1 and metrics["optimizer_steps"] == 4

    # The same steps by hand: per-sample plain forwards, ratio exp(logp - old), clipped surrogate
    # min(r A, clip(r) A), token-mean over the mini-batch, SGD. The mini-batch order is the one
    # policy_update draws: randperm over the groups, once per epoch, from the generator passed in.
    order_gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        old = plain_logprobs(hand, data, 1.0)
    losses, clipped, tokens, ratios = [], 0, 0, []
    for _ in range(2):
        order = torch.randperm(len(data.prompts), generator=order_gen).tolist()
        for mini in (order[:2], order[2:]):
            rows = [i for i in range(len(data.group_index)) if int(data.group_index[i]) in mini]
            logp = plain_logprobs(hand, data, 1.0, rows)
            surrogate, n_tok = 0.0, 0
            for i in rows:
                adv = data.advantages[i, : len(old[i])].double()
                r = torch.exp(logp[i] - old[i])
                r_clipped = r.clamp(1 - clip_low, 1 + clip_high)
                surrogate = surrogate + torch.minimum(r * adv, r_clipped * adv).sum()
                clipped += int((r_clipped * adv < r * adv).sum())
                n_tok += len(old[i])
                ratios.append(r.detach())
            loss = -surrogate / n_tok
            losses.append(float(loss.detach()))
            tokens += n_tok
            params = list(hand.parameters())
            with torch.no_grad():
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.sub_(lr * g)
            step = len(losses) - 1
            for p0, p_opo, p_hand in zip(model.parameters(), after_step[step], hand.parameters()):
                moved = p_hand.detach() - p0.double()
                # fp32 policy: rounding a weight of ~1 (norm weights) that moves by ~1e-3 puts the
                # floor at ~2e-4 (measured); a wrong ratio, clip bound or normaliser is off by far more.
                err = float((p_opo.double() - p0.double() - moved).abs().max())
                assert err <= 1e-3 * float(moved.abs().max()), step
    ratios = torch.cat(ratios)
    # The later mini-batches see moved weights, some tokens clip, and none sits so near a bound that
    # fp32 rounding (~1e-6) could flip its clip decision.
    assert float((ratios - 1).abs().max()) > 0.5 and 0 < clipped < tokens
    assert float(torch.minimum((ratios - (1 - clip_low)).abs(), (ratios - (1 + clip_high)).abs()).min()) > 1e-4
    assert abs(metrics["loss"] - sum(losses) / len(losses)) <= 1e-5 * max(abs(x) for x in losses)
    assert metrics["clip_frac"] == pytest.approx(clipped / tokens, abs=1e-12)


@pytest.mark.parametrize("overrides, shift", [({"algo.loss": "ppo_clip", "algo.mini_batches": 2}, False), ({}, True)])
def test_float64_policy_updates_off_policy_and_measures_shift(tiny, overrides, shift):
    model, tok = tiny
    data = step_data(model, tok)
    m = copy.deepcopy(model).double()
    m.set_attn_implementation("sdpa")  # float64 eager attention gives NaN on left-padding rows
    metrics = update(m, torch.optim.SGD(m.parameters(), lr=1.0), cfg_for(**overrides), data,
                            generator=torch.Generator().manual_seed(0), measure_shift=shift)
    assert metrics["skipped_steps"] == 0


def test_nan_gradient_skips_the_optimizer_step(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    data.advantages[0, 0] = float("nan")
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    metrics = update(m, torch.optim.SGD(m.parameters(), lr=1.0), cfg_for(), data)
    assert metrics["skipped_steps"] == 1 and metrics["optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_fused_adamw_matches_the_reference_implementation(tiny):
    from opo.run import build_optimizer

    model, tok = tiny
    data = step_data(model, tok)
    cfg = cfg_for(**{"optim.lr": 1e-3})
    fused = copy.deepcopy(model)
    update(fused, build_optimizer(fused, cfg.optim), cfg, data)
    plain = copy.deepcopy(model)
    o = cfg.optim
    reference = torch.optim.AdamW(plain.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay, foreach=False)
    update(plain, reference, cfg, data)
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)


def test_policy_shift_is_zero_without_a_step_and_positive_with_one(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    cfg = cfg_for(**{"train.micro_batch_tokens": 40})
    m0 = copy.deepcopy(model)
    still = update(m0, torch.optim.SGD(m0.parameters(), lr=0.0), cfg, data, measure_shift=True)
    assert still["policy_shift/k1"] == 0.0 and still["policy_shift/k3"] == 0.0
    assert still["passes/policy_shift"] == still["passes/train_forward"]  # one no-grad pass per micro-batch
    m = copy.deepcopy(model)
    moved = update(m, torch.optim.SGD(m.parameters(), lr=10.0), cfg, data, measure_shift=True)
    assert moved["policy_shift/k3"] > 0
    # k3 equals a direct recomputation of KL(before || after) on the batch's tokens
    before = record_logprobs(model, scoring_of(cfg), data, list(range(len(data.prompts))), Counter(), "x")
    after = record_logprobs(m, scoring_of(cfg), data, list(range(len(data.prompts))), Counter(), "x")
    d = (after - before) * data.mask
    k3 = float(((torch.exp(d) - d - 1) * data.mask).sum() / data.mask.sum())
    assert abs(moved["policy_shift/k3"] - k3) < 1e-6 * max(1.0, k3)
    off = cfg_for(**{"algo.loss": "ppo_clip", "algo.mini_batches": 2, "train.micro_batch_tokens": 40})
    m2 = copy.deepcopy(model)
    shifted = update(m2, torch.optim.SGD(m2.parameters(), lr=10.0), off, data,
                            generator=torch.Generator().manual_seed(0), measure_shift=True)
    assert shifted["policy_shift/k3"] > 0 and "passes/policy_shift" in shifted
