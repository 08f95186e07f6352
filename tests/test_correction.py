"""Rollout correction: importance weights for a sampler whose log-probs are not the trainer's."""

import copy
import dataclasses
import math

import pytest
import torch

from opo.algos.losses import ROLLOUT_CORRECTIONS
from opo.config import Config, ConfigError
from opo.update import Scoring, StepData, policy_update
from test_update import cfg_for, step_data


def test_truncated_is_caps_each_token_ratio():
    log_ratio = torch.log(torch.tensor([[0.5, 1.0, 3.0], [2.5, 1.5, 9.0]]))  # (2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w, affected = ROLLOUT_CORRECTIONS.get("tis")(log_ratio, mask, 2.0)
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 2.0], [2.0, 1.5, 0.0]]))
    assert affected.tolist() == [[False, False, True], [True, False, False]]  # padding is never affected


def test_masked_is_weights_whole_sequences_and_drops_those_beyond_the_threshold():
    # sequence 0: rho = 0.5 * 3 = 1.5 (kept); sequence 1: rho = 2 * 1.5 = 3 > 2 (masked); the padded
    # token of sequence 1 (ratio 100) must not count
    log_ratio = torch.log(torch.tensor([[0.5, 3.0], [2.0, 100.0]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w, affected = ROLLOUT_CORRECTIONS.get("mis")(log_ratio, mask, 2.5)
    assert torch.allclose(w, torch.tensor([[1.5, 1.5], [2.0, 0.0]]))
    assert not affected.any()
    w, affected = ROLLOUT_CORRECTIONS.get("mis")(log_ratio, mask, 1.8)
    assert torch.allclose(w, torch.tensor([[1.5, 1.5], [0.0, 0.0]]))
    assert affected.tolist() == [[False, False], [True, False]]


def _delta(model, data, correction, threshold=2.0):
    m = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    cfg = cfg_for()
    scoring = Scoring(1.0, "fp32", True, 4096, correction, threshold)
    metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), data, cfg.algo, scoring, 0.0)
    return {n: p.detach() - before[n] for n, p in m.named_parameters()}, metrics


def _close(a, b):
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-7, rtol=1e-4), n


def test_an_exact_sampler_makes_every_correction_a_no_op(tiny):
    model, tok = tiny
    data = step_data(model, tok)  # opo's engine: the sampler's log-probs are the trainer's
    plain, m0 = _delta(model, data, "none")
    for name in ("tis", "mis"):
        corrected, m = _delta(model, data, name)
        _close(plain, corrected)
        assert m["correction/weight_mean"] == pytest.approx(1.0, abs=1e-5) and m["correction/affected"] == 0
    assert m0["logprob_gap/max_abs"] < 1e-4 and m0["logprob_gap/over_threshold"] == 0
    assert "correction/weight_mean" not in m0


@pytest.mark.parametrize("name", ["tis", "mis"])
def test_correction_weights_the_policy_gradient_of_each_token(tiny, name):
    # The corrected step is the plain step with advantages A * w (w carries no gradient): a sampler
    # whose log-probs are shifted by known amounts gives known weights.
    model, tok = tiny
    data = step_data(model, tok)
    shift = torch.zeros_like(data.sampler_logp)
    shift[0::3] = 0.3  # sampler more confident than the trainer: ratio e^-0.3 per token
    shift[1::3] = -1.0  # less confident: ratio e per token, beyond the threshold 2
    skewed = dataclasses.replace(data, sampler_logp=data.sampler_logp + shift * data.mask)
    log_ratio = (data.sampler_logp - skewed.sampler_logp)  # the trainer's log-probs equal data.sampler_logp's
    weights, affected = ROLLOUT_CORRECTIONS.get(name)(log_ratio, data.mask, 2.0)
    assert affected.any() and (weights[data.mask.bool()] != 1).any()
    corrected, metrics = _delta(model, skewed, name)
    by_hand, _ = _delta(model, dataclasses.replace(data, advantages=data.advantages * weights), "none")
    _close(corrected, by_hand)
    n_tok = float(data.mask.sum())
    assert metrics["logprob_gap/mean"] == pytest.approx(float((log_ratio * data.mask).sum()) / n_tok, abs=1e-5)
    assert metrics["logprob_gap/max_abs"] == pytest.approx(1.0, abs=1e-4)
    beyond = float(((log_ratio.abs() > math.log(2.0)) & data.mask.bool()).sum())
    assert metrics["logprob_gap/over_threshold"] == pytest.approx(beyond / n_tok)
    assert metrics["correction/affected"] == pytest.approx(float(affected.sum()) / n_tok)


def test_off_policy_weights_compare_the_sampler_with_the_policy_at_rollout_time(tiny):
    # Two epochs of ppo_clip: the weights must use the recorded old log-probs (the policy that the
    # rollout stood for), not the moving policy of the second epoch. With a sampler equal to that
    # policy every weight is 1, whatever the second epoch's policy is.
    model, tok = tiny
    data = step_data(model, tok)
    cfg = cfg_for(**{"algo.loss": "ppo_clip", "algo.ppo_epochs": 2})

    def run(correction):
        m = copy.deepcopy(model)
        scoring = Scoring(1.0, "fp32", True, 4096, correction, 2.0)
        metrics = policy_update(m, torch.optim.SGD(m.parameters(), lr=0.5), data, cfg.algo, scoring, 0.0,
                                generator=torch.Generator().manual_seed(0))
        return {n: p.detach() for n, p in m.named_parameters()}, metrics

    plain, _ = run("none")
    corrected, metrics = run("tis")
    _close(plain, corrected)
    assert metrics["optimizer_steps"] == 2 and metrics["correction/weight_mean"] == pytest.approx(1.0, abs=1e-5)


def test_auto_correction_follows_the_engine():
    cfg = Config()
    assert cfg.correction == "none"
    cfg.rollout.engine = "vllm"
    assert cfg.correction == "tis"
    cfg.algo.correction = "mis"
    assert cfg.correction == "mis"
    cfg.algo.correction = "none"
    assert cfg.correction == "none"


def test_engine_settings_are_checked():
    cfg = Config()
    cfg.set("algo.correction_threshold", 1.0)
    with pytest.raises(ConfigError, match="algo.correction_threshold must be > 1"):
        cfg.validate()
    cfg = Config()
    cfg.set("rollout.engine", "vllm")
    cfg.set("hybrid.enabled", True)
    with pytest.raises(ConfigError, match="rollout.engine=vllm cannot force the mode tags"):
        cfg.validate()
    cfg = Config()
    cfg.set("vllm.memory", 1.5)
    with pytest.raises(ConfigError, match=r"vllm.memory is a share of GPU memory in \(0, 1\]"):
        cfg.validate()
    with pytest.raises(ConfigError, match="rollout.engine"):
        Config().set("rollout.engine", "sglang")


def test_vllm_is_refused_under_torchrun_and_in_diagnose(monkeypatch):
    from opo.config import DiagnoseConfig

    cfg = Config()
    cfg.set("rollout.engine", "vllm")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="runs in one process for now: under torchrun use rollout.engine=hf"):
        cfg.validate()
    monkeypatch.delenv("WORLD_SIZE")
    d = DiagnoseConfig()
    d.rollout.engine = "vllm"
    with pytest.raises(ConfigError, match="opo diagnose samples with opo's own engine"):
        d.validate()
