import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opo.logprobs import PromptBatch, completion_logprobs
from opo.rollout.hf import HFEngine, sample_categorical


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    # Scaled-up layers make the greedy output change from token to token (the unscaled random model
    # repeats one token), so a wrong cache position or token feed shows. Top-2 logit margins along
    # these paths are >= 3e-3, far above fp32 differences between the two computations.
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.mul_(8)
    prompts = [[1, 5, 6, 7], [9, 10], [3, 4, 5, 6, 7, 8]]

    def reference(prompt, stop_ids):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=stop_ids,
                             pad_token_id=tok.pad_token_id)
        return out[0, len(prompt):].tolist()

    # The second prompt's third greedy token also stops: one sequence leaves the batch mid-way.
    stop_ids = [tok.eos_token_id, reference(prompts[1], [tok.eos_token_id])[2]]
    batch = HFEngine(model, stop_ids, tok.pad_token_id, precision="fp32").generate(prompts, [0, 1, 2], 1, 6, 0.0)
    for p, r in zip(prompts, batch.rollouts):
        assert r.completion == reference(p, stop_ids)
        if r.completion[-1] in stop_ids:
            assert r.finish == "stop"
        else:
            assert r.finish == "length" and len(r.completion) == 6
    assert {r.finish for r in batch.rollouts} == {"stop", "length"}


def test_sampler_logprobs_equal_trainer_logprobs_fp32(tiny):
    model, tok = tiny
    prompts = [[1, 5, 6, 7], [9, 10]]
    engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, precision="fp32", seed=3)
    batch = engine.generate(prompts, [10, 11], 3, 5, 0.8)
    assert len(batch) == 6 and {r.group for r in batch.rollouts} == {10, 11}
    assert all(r.finish in ("stop", "length") and len(r.completion) == len(r.logprobs) for r in batch.rollouts)
    plist, gi = batch.prompts()
    ids, mask, sampler = batch.completion_tensors(tok.pad_token_id)
    with torch.no_grad():
        trainer, _ = completion_logprobs(model, PromptBatch.from_lists(plist, tok.pad_token_id), ids, mask, gi, 0.8)
    assert torch.allclose(trainer * mask, sampler * mask, atol=1e-4)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    runs = [HFEngine(model, [tok.eos_token_id], tok.pad_token_id, "fp32", seed=5).generate([[1, 2]], [0], 4, 5, 1.0)
            for _ in range(2)]
    assert [r.completion for r in runs[0].rollouts] == [r.completion for r in runs[1].rollouts]


def test_stop_token_ends_a_sequence(tiny):
    model, tok = tiny
    engine = HFEngine(model, list(range(len(tok))), tok.pad_token_id, "fp32")  # every token stops
    batch = engine.generate([[1, 2]], [0], 3, 5, 1.0)
    assert all(len(r.completion) == 1 and r.finish == "stop" for r in batch.rollouts)


def test_bf16_engine_samples_from_a_synced_copy(tiny):
    model, tok = tiny
    policy = copy.deepcopy(model)
    engine = HFEngine(policy, [tok.eos_token_id], tok.pad_token_id, "bf16", seed=3)
    assert engine.model is not policy and next(engine.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    engine.sync_weights()
    for a, b in zip(engine.model.parameters(), policy.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16))
    batch = engine.generate([[1, 5, 6, 7], [9, 10]], [0, 1], 3, 5, 1.0)
    plist, gi = batch.prompts()
    ids, mask, sampler = batch.completion_tensors(tok.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trainer, _ = completion_logprobs(policy, PromptBatch.from_lists(plist, tok.pad_token_id), ids, mask, gi)
    # bf16 sampler vs the trainer's bf16 autocast: the same numerics up to op order
    assert float(((trainer - sampler).abs() * mask).max()) < 0.1


def test_whole_completions_follow_the_models_tempered_distribution():
    # End to end through generate: prefill, the shared cache, dropping finished rows, temperature and
    # the sampler, against exact outcome probabilities from the model's plain forward in float64.
    config = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # far from uniform: next-token probabilities from ~1e-5 to ~0.9
    prompt, temperature, n = [3, 7, 1], 0.7, 5000
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        first = (exact(torch.tensor([prompt])).logits[0, -1] / temperature).log_softmax(-1)  # (V,)
        second = (exact(torch.tensor([prompt + [a] for a in range(12)])).logits[:, -1] / temperature).log_softmax(-1)
    stop = int(first.argsort()[-2])  # a likely first token: 1-token completions are a common outcome
    logp = {(stop,): float(first[stop])}
    logp.update({(a, b): float(first[a] + second[a, b]) for a in range(12) if a != stop for b in range(12)})

    batch = HFEngine(model, [stop], 0, "fp32", seed=0).generate([prompt], [0], n, 2, temperature)
    counts = dict.fromkeys(logp, 0)
    for r in batch.rollouts:
        outcome = tuple(r.completion)
        counts[outcome] += 1  # a KeyError is an impossible completion
        assert r.finish == ("stop" if outcome[-1] == stop else "length")
        assert abs(sum(r.logprobs) - logp[outcome]) < 1e-4
    # Chi-square goodness of fit; outcomes pooled in ascending order of expected count until each bin
    # expects >= 5 (the leftover, if any, joins the last bin).
    expected = torch.tensor([n * math.exp(logp[o]) for o in logp], dtype=torch.float64)
    observed = torch.tensor([counts[o] for o in logp], dtype=torch.float64)
    bins_e, bins_o, acc_e, acc_o = [], [], 0.0, 0.0
    for i in expected.argsort().tolist():
        acc_e, acc_o = acc_e + float(expected[i]), acc_o + float(observed[i])
        if acc_e >= 5:
            bins_e.append(acc_e)
            bins_o.append(acc_o)
            acc_e, acc_o = 0.0, 0.0
    bins_e[-1] += acc_e
    bins_o[-1] += acc_o
    e, o = torch.tensor(bins_e, dtype=torch.float64), torch.tensor(bins_o, dtype=torch.float64)
    chi2 = float(((o - e) ** 2 / e).sum())
    p_value = float(torch.special.gammaincc(torch.tensor((len(e) - 1) / 2), torch.tensor(chi2 / 2)))
    assert len(e) > 20 and p_value > 1e-3, (chi2, len(e), p_value)


def test_inverse_cdf_sampling_draws_from_the_distribution():
    # V = 2500 is not a multiple of the block; most tokens have probability zero
    gen = torch.Generator().manual_seed(0)
    probs = torch.zeros(2500)
    probs[[3, 1023, 1024, 1500, 2499]] = torch.tensor([0.05, 0.15, 0.3, 0.2, 0.3])
    draws = sample_categorical(probs.expand(40000, -1), gen).view(-1)
    counts = torch.bincount(draws, minlength=2500).double()
    assert set(counts.nonzero().view(-1).tolist()) <= {3, 1023, 1024, 1500, 2499}
    expected = probs.double() * 40000
    hit = expected > 0
    chi2 = float(((counts[hit] - expected[hit]) ** 2 / expected[hit]).sum())
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.001


def test_forced_prefixes_start_completions_with_their_log_probs(tiny):
    # HGPO's mode tag: forced tokens are part of the completion and scored, but not drawn
    model, tok = tiny
    prompts = [[1, 5, 6, 7], [9, 10]]
    engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, precision="fp32", seed=3)
    prefixes = [[40], [41, 42], [40], [41, 42]]  # 2 samples per prompt, prompt-major
    batch = engine.generate(prompts, [0, 1], 2, 5, 0.8, prefixes=prefixes)
    for r, p in zip(batch.rollouts, prefixes):
        assert r.completion[:len(p)] == p and r.meta["forced"] == len(p)
    plist, gi = batch.prompts()
    ids, mask, sampler = batch.completion_tensors(tok.pad_token_id)
    with torch.no_grad():
        trainer, _ = completion_logprobs(model, PromptBatch.from_lists(plist, tok.pad_token_id), ids, mask, gi, 0.8)
    assert torch.allclose(sampler * mask, trainer * mask, atol=1e-5)
    # without prefixes nothing is forced and the meta stays empty
    assert all(r.meta == {} for r in engine.generate(prompts, [0, 1], 2, 3, 0.8).rollouts)


def test_forced_prefix_errors(tiny):
    model, tok = tiny
    engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, precision="fp32")
    with pytest.raises(ValueError, match="one per completion"):
        engine.generate([[1, 2]], [0], 2, 4, 1.0, prefixes=[[5]])
    with pytest.raises(ValueError, match="does not fit"):
        engine.generate([[1, 2]], [0], 1, 2, 1.0, prefixes=[[5, 6, 7]])
