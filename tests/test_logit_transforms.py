"""Families whose ``*ForCausalLM.forward`` transforms the output layer's logits (softcapping, scaling):
the trainer, the sampler and the load-time guard must all reproduce the model's own distribution."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

import opo.logprobs
import opo.models
from opo.logprobs import LogitTransform, PromptBatch, completion_logprobs
from opo.models import check_reproducible_logits
from opo.rollout.hf import HFEngine

# Transform values that matter: with the output layer scaled up (raw logits of several units), a
# softcap of 2 saturates many logits and a scale of 4 changes the distribution's temperature.
FAMILIES = {
    "gemma2": dict(final_logit_softcapping=2.0),  # logits = cap * tanh(logits / cap)
    "gemma3_text": dict(final_logit_softcapping=2.0),  # Gemma3ForCausalLM
    "vaultgemma": dict(final_logit_softcapping=2.0),
    "nanochat": dict(final_logit_softcapping=2.0),
    "beam": dict(final_logit_softcapping=2.0),
    "granite": dict(logits_scaling=4.0),  # logits = logits / logits_scaling
    "granite_swa": dict(logits_scaling=4.0),
    "cohere": dict(logit_scale=4.0),  # logits = logits * logit_scale
    "cohere2": dict(logit_scale=4.0),
}
PAD, BOS, EOS = 0, 1, 2
# Equal lengths, so no left padding: float64 eager attention gives NaN on padding rows and Gemma 2
# has no sdpa. Padding and the shared prefix are covered by tests/test_logprobs.py.
PROMPTS = [[BOS, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
TEMPERATURE = 0.7


def family_model(model_type: str) -> torch.nn.Module:
    """A tiny random ``model_type`` model (fp32) with its family's logit transform set by FAMILIES."""
    config = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False, **FAMILIES[model_type],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10)  # raw logits of several units
    return model


def fp64(model):
    """The model in float64, with eager attention (Gemma 2 has no sdpa)."""
    model = model.double()
    model.set_attn_implementation("eager")
    return model


def batch():
    completions = torch.tensor([[20, 21, 22, EOS], [23, EOS, 0, 0], [24, 25, 26, 27], [28, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    return PromptBatch.from_lists(PROMPTS, PAD), completions, mask, torch.tensor([0, 0, 1, 1])


def own_logprobs(model, prompts, completions, mask, group_index, temperature):
    """Reference from the model's own forward: log-probs and entropies ``(N, T)`` of each full sequence."""
    logp = torch.zeros(completions.shape, dtype=model.dtype)
    ent = torch.zeros(completions.shape, dtype=model.dtype)
    for i in range(len(completions)):
        p = prompts[group_index[i]]
        c = completions[i][mask[i].bool()]
        ids = torch.tensor(p + c.tolist()).unsqueeze(0)
        full = (model(input_ids=ids).logits[0, len(p) - 1 : -1] / temperature).log_softmax(-1)  # (len(c), V)
        logp[i, : len(c)] = full.gather(-1, c.unsqueeze(-1)).squeeze(-1)
        ent[i, : len(c)] = -(full.exp() * full).sum(-1)
    return logp, ent


def test_every_known_family_is_tested_and_its_transform_matters():
    assert set(FAMILIES) == set(opo.logprobs._LOGIT_TRANSFORMS)
    for model_type in FAMILIES:
        assert LogitTransform.from_config(family_model(model_type).config) != LogitTransform(), model_type


@pytest.mark.parametrize("model_type", FAMILIES)
def test_trainer_logprobs_equal_the_models_own(model_type):
    model = fp64(family_model(model_type))
    pb, completions, mask, gi = batch()
    with torch.no_grad():
        ours, ent = completion_logprobs(model, pb, completions, mask, gi, temperature=TEMPERATURE, chunk_size=3)
        ref, ref_ent = own_logprobs(model, PROMPTS, completions, mask, gi, TEMPERATURE)
    # Observed: up to ~3e-7, as transformers' cached and uncached decoder passes differ by that much
    # even in float64 (fp32 internals); a missing transform is off by nats.
    assert torch.allclose(ours * mask, ref * mask, atol=1e-6, rtol=0)
    assert torch.allclose(ent * mask, ref_ent * mask, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_trainer_gradients_equal_autograd_through_the_models_forward(model_type):
    # float64: the hand-written backward of the chunked head, through the family's transform, must
    # equal autograd through the model's own forward (log-probs and entropy both carry gradient)
    model = fp64(family_model(model_type))
    pb, completions, mask, gi = batch()
    g_lp, g_ent = torch.randn(mask.shape, dtype=torch.float64), torch.randn(mask.shape, dtype=torch.float64)

    model.zero_grad()
    logp, ent = completion_logprobs(
        model, pb, completions, mask, gi, temperature=TEMPERATURE, chunk_size=3, with_entropy_grad=True
    )
    ((logp * g_lp + ent * g_ent) * mask).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    ref_lp, ref_ent = own_logprobs(model, PROMPTS, completions, mask, gi, TEMPERATURE)
    ((ref_lp * g_lp + ref_ent * g_ent) * mask).sum().backward()
    for n, p in model.named_parameters():
        # as in test_logprobs: ~1e-7 of the largest entry (some attention/RoPE internals run in fp32)
        assert torch.allclose(ours[n], p.grad, atol=1e-6 * float(p.grad.abs().max()), rtol=0), n


@pytest.mark.parametrize("model_type", FAMILIES)
def test_sampler_logprobs_equal_the_models_own(model_type):
    model = family_model(model_type)
    batch_ = HFEngine(model, [EOS], PAD, precision="fp32", seed=3).generate(PROMPTS, [0, 1], 3, 5, TEMPERATURE)
    for r in batch_.rollouts:
        ids = torch.tensor(r.prompt + r.completion).unsqueeze(0)
        with torch.no_grad():
            full = (model(input_ids=ids).logits[0, len(r.prompt) - 1 : -1] / TEMPERATURE).log_softmax(-1)
        ref = full.gather(-1, torch.tensor(r.completion).unsqueeze(-1)).squeeze(-1)
        # fp32: observed up to ~2e-6; a missing transform is off by nats
        assert torch.allclose(torch.tensor(r.logprobs), ref, atol=1e-5, rtol=0), (r.completion, r.logprobs)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_load_guard_accepts_the_known_families(model_type):
    check_reproducible_logits(family_model(model_type), model_type)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_load_guard_rejects_a_family_whose_rule_is_missing(model_type, monkeypatch):
    # what opo did before it knew these transforms: the bare output layer
    monkeypatch.delitem(opo.logprobs._LOGIT_TRANSFORMS, model_type)
    with pytest.raises(ValueError, match=f"'{model_type}'.*cannot reproduce"):
        check_reproducible_logits(family_model(model_type), model_type)


def test_load_guard_accepts_the_tiny_llama_and_keeps_its_mode(tiny):
    model = tiny[0]
    training = model.training
    check_reproducible_logits(model, "tiny")
    assert model.training == training


class TripledLogits(LlamaForCausalLM):
    """A family opo does not know: its forward does something to the logits that opo does not."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3
        return out


def test_load_guard_rejects_a_forward_it_cannot_reproduce(tiny, monkeypatch):
    def tripled(tok, seed=0):
        torch.manual_seed(seed)
        return TripledLogits(copy.deepcopy(tiny[0].config))

    monkeypatch.setattr(opo.models, "tiny_model", tripled)
    with pytest.raises(ValueError, match=r"'tiny'.*llama.*cannot reproduce"):
        opo.models.load_model("tiny")
