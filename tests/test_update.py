import copy
from collections import Counter

import pytest
import torch

from opo.algos.advantages import ADVANTAGES
from opo.config import Config
from opo.rollout.hf import HFEngine
from opo.update import StepData, micro_batches, policy_update, record_logprobs


def step_data(model, tok, n_prompts=4, k=3):
    prompts = [[1, 5 + i, 6, 7 + 2 * i][: 2 + i % 3] for i in range(n_prompts)]
    batch = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, "fp32", seed=1).generate(
        prompts, list(range(n_prompts)), k, 6, 1.0
    )
    plist, gi = batch.prompts()
    ids, mask, logp = batch.completion_tensors(tok.pad_token_id)
    rewards = torch.rand(len(batch))
    adv = ADVANTAGES.get("opo")(rewards, mask, batch.group_ids())
    return StepData(plist, gi, ids, mask, logp, adv, tok.pad_token_id)


def cfg_for(**overrides):
    cfg = Config()
    cfg.model.precision = "fp32"
    cfg.optim.grad_clip = 0.0
    for k, v in overrides.items():
        cfg.set(k, v)
    return cfg.validate()


def sgd_delta(model, cfg, data):
    m = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), cfg, data)
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
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=0.0), cfg, data)
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
    cfg = cfg_for(**{"algo.loss": "ppo_clip", "algo.mini_batches": 2, "algo.ppo_epochs": 2, "train.micro_batch_tokens": 100000})
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=1e-2), cfg, data, generator=torch.Generator().manual_seed(0))
    assert metrics["passes/old_logprob"] == 1 and metrics["optimizer_steps"] == 4
    assert 0.0 <= metrics["clip_frac"] <= 1.0


def test_nan_gradient_skips_the_optimizer_step(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    data.advantages[0, 0] = float("nan")
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), cfg_for(), data)
    assert metrics["skipped_steps"] == 1 and metrics["optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_fused_adamw_matches_the_reference_implementation(tiny):
    from opo.trainer import build_optimizer

    model, tok = tiny
    data = step_data(model, tok)
    cfg = cfg_for(**{"optim.lr": 1e-3})
    fused = copy.deepcopy(model)
    policy_update(fused, build_optimizer(fused, cfg), cfg, data)
    plain = copy.deepcopy(model)
    o = cfg.optim
    reference = torch.optim.AdamW(plain.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay, foreach=False)
    policy_update(plain, reference, cfg, data)
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)


def test_policy_shift_is_zero_without_a_step_and_positive_with_one(tiny):
    model, tok = tiny
    data = step_data(model, tok)
    cfg = cfg_for(**{"train.micro_batch_tokens": 40})
    m0 = copy.deepcopy(model)
    still = policy_update(m0, torch.optim.SGD(m0.parameters(), lr=0.0), cfg, data, measure_shift=True)
    assert still["policy_shift/k1"] == 0.0 and still["policy_shift/k3"] == 0.0
    assert still["passes/policy_shift"] == still["passes/train_forward"]  # one no-grad pass per micro-batch
    m = copy.deepcopy(model)
    moved = policy_update(m, torch.optim.SGD(m.parameters(), lr=10.0), cfg, data, measure_shift=True)
    assert moved["policy_shift/k3"] > 0
    # k3 equals a direct recomputation of KL(before || after) on the batch's tokens
    before = record_logprobs(model, cfg, data, list(range(len(data.prompts))), Counter(), "x")
    after = record_logprobs(m, cfg, data, list(range(len(data.prompts))), Counter(), "x")
    d = (after - before) * data.mask
    k3 = float(((torch.exp(d) - d - 1) * data.mask).sum() / data.mask.sum())
    assert abs(moved["policy_shift/k3"] - k3) < 1e-6 * max(1.0, k3)
    off = cfg_for(**{"algo.loss": "ppo_clip", "algo.mini_batches": 2, "train.micro_batch_tokens": 40})
    m2 = copy.deepcopy(model)
    shifted = policy_update(m2, torch.optim.SGD(m2.parameters(), lr=10.0), off, data,
                            generator=torch.Generator().manual_seed(0), measure_shift=True)
    assert shifted["policy_shift/k3"] > 0 and "passes/policy_shift" in shifted
