import copy

import torch

from opo.logprobs import PromptBatch, completion_logprobs
from opo.rollout.hf import HFEngine, sample_categorical


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    prompts = [[1, 5, 6, 7], [9, 10]]
    engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, precision="fp32")
    batch = engine.generate(prompts, [0, 1], 1, 6, 0.0)
    for p, r in zip(prompts, batch.rollouts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert r.completion == ref[: len(r.completion)]


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
