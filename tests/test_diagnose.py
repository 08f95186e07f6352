"""The gradient-variance diagnostic against brute-force resampling on a model small enough for it."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opo.diagnose import (
    CountSketch,
    baseline_variances,
    estimator_variance,
    gradient_gram,
    length_fit,
    sequence_gradient,
)
from opo.rollout.hf import HFEngine

PROMPT, EOS, PAD = [1, 5, 7], 2, 0


def micro_model():
    """One layer, 12 tokens, weights large enough that the policy is far from uniform."""
    config = LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         initializer_range=0.4, tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS,
                         bos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def reward(completion):  # correlated with length: longer responses more often contain token 3
    return float(3 in completion)


def sample(model, n, seed):
    batch = HFEngine(model, [EOS], PAD, "fp32", seed=seed).generate([PROMPT], [0], n, 6, 1.0)
    comps = [r.completion for r in batch.rollouts]
    return comps, torch.tensor([reward(c) for c in comps]), torch.tensor([len(c) for c in comps])


def flat_grad(model, completion):
    return torch.cat([g.reshape(-1) for g in sequence_gradient(model, PROMPT, completion, PAD)]).double()


def test_variance_formula_agrees_with_brute_force_resampling_and_b_star_minimises_it():
    model = micro_model()
    # Diagnostic: one large group, variances from its Gram matrix.
    comps, r, lengths = sample(model, 500, seed=1)
    gram, _ = gradient_gram(model, [PROMPT], comps, torch.zeros(len(comps), dtype=torch.long), PAD)
    sq = torch.diagonal(gram)
    b_star = float((sq * r).sum() / sq.sum())
    assert 0.0 < float(r.mean()) < 1.0 and len(set(lengths.tolist())) > 2  # a non-degenerate case

    def diag_var(b):
        return estimator_variance(gram, r, r.double() - b)

    # Brute force: R independent mini-batches of K responses; the estimator's variance across them,
    # times K, is the per-sample variance. A_r = mean r_i g_i and B_r = mean g_i give every b at once.
    R, K = 250, 8
    A, B = [], []
    for rep in range(R):
        c, rr, _ = sample(model, K, seed=100 + rep)
        g = torch.stack([flat_grad(model, x) for x in c])  # (K, D)
        A.append((rr.double().unsqueeze(1) * g).mean(0))
        B.append(g.mean(0))
    A, B = torch.stack(A), torch.stack(B)  # (R, D)

    def brute_var(b):
        est = A - b * B
        return float(((est - est.mean(0)) ** 2).sum(1).mean()) * R / (R - 1) * K

    for b in (0.0, 0.5, b_star, 1.0):
        # both sides are estimates (500 and 250x8 samples): ~10% relative error each
        assert diag_var(b) == pytest.approx(brute_var(b), rel=0.3), b
    # The brute-force variance is a quadratic in b; its minimiser is close to the measured b*.
    dA, dB = A - A.mean(0), B - B.mean(0)
    b_brute = float((dA * dB).sum() / (dB * dB).sum())
    assert abs(b_brute - b_star) < 0.15
    grid = [i / 20 for i in range(21)]
    assert brute_var(b_star) <= min(brute_var(b) for b in grid) * 1.03
    # On the diagnostic's own samples b* is the exact minimiser among scalar baselines.
    assert all(diag_var(b_star) <= diag_var(b) + 1e-12 for b in grid)


def test_baseline_table_ranks_the_optimal_baseline_first_among_scalar_baselines():
    model = micro_model()
    groups, comps, rs, ls = [], [], [], []
    for g in range(3):
        c, r, l_ = sample(model, 8, seed=10 + g)
        groups += [g] * len(c)
        comps += c
        rs.append(r)
        ls.append(l_)
    gram, info = gradient_gram(model, [PROMPT] * 3, comps, torch.tensor(groups), PAD)
    assert torch.isnan(gram[0, 8]) and not torch.isnan(gram[:8, :8]).any()
    table = baseline_variances(gram, torch.cat(rs), torch.cat(ls), torch.tensor(groups))
    assert set(table) == {"none", "group_mean", "grpo", "rloo", "opo", "optimal"}
    assert table["none"]["relative"] == pytest.approx(1.0)
    for name in ("none", "group_mean", "opo"):  # scalar per-group baselines: b* is optimal on these samples
        assert table["optimal"]["variance"] <= table[name]["variance"] + 1e-12, name
    assert info["seconds_per_response"] > 0 and info["dims"] == sum(p.numel() for p in model.parameters())


def test_exact_gram_matches_individual_gradients_and_the_sketch_approximates_it():
    model = micro_model()
    comps, _, _ = sample(model, 6, seed=3)
    index = torch.zeros(6, dtype=torch.long)
    exact, _ = gradient_gram(model, [PROMPT], comps, index, PAD)
    g = torch.stack([flat_grad(model, c) for c in comps])
    assert torch.allclose(exact, g @ g.T, rtol=1e-6, atol=1e-9)
    sketched, info = gradient_gram(model, [PROMPT], comps, index, PAD, sketch_dim=2048, seed=0)
    assert info["dims"] == 2048
    rel = (torch.diagonal(sketched) / torch.diagonal(exact) - 1).abs()
    assert float(rel.max()) < 0.25  # relative error ~ sqrt(2 / 2048) = 3% per norm
    # The sketch is linear and unbiased: averaged over seeds, norms converge to the exact ones.
    params = [p for p in model.parameters()]
    grads = sequence_gradient(model, PROMPT, comps[0], PAD)
    norms = [float(CountSketch(params, 64, seed=s)(grads).square().sum()) for s in range(200)]
    assert sum(norms) / len(norms) == pytest.approx(float(exact[0, 0]), rel=0.1)


def test_length_fit_on_exact_and_noisy_lines():
    x = torch.tensor([1.0, 2, 3, 4, 5])
    fit = length_fit(2 * x, x)
    assert fit["slope_through_origin"] == pytest.approx(2.0) and fit["pearson"] == pytest.approx(1.0)
    assert fit["r2_through_origin"] == pytest.approx(1.0) and fit["ols_intercept"] == pytest.approx(0.0, abs=1e-9)
    fit = length_fit(torch.tensor([5.0, 4, 3, 2, 1]), x)
    assert fit["pearson"] == pytest.approx(-1.0) and fit["spearman"] == pytest.approx(-1.0)
