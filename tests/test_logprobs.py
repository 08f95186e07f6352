import copy

import torch

from opo.logprobs import PromptBatch, completion_logprobs, head_logprobs


def unshared_logprobs(model, prompts, completions, mask, group_index, temperature=1.0):
    """Reference: every (prompt + completion) as its own full sequence, full-vocabulary log-softmax."""
    out = torch.zeros(completions.shape, dtype=model.dtype)
    for i in range(len(completions)):
        p = prompts[group_index[i]]
        c = completions[i][mask[i].bool()]
        ids = torch.tensor(p + c.tolist()).unsqueeze(0)
        logits = model(input_ids=ids).logits[0, len(p) - 1 : -1] / temperature  # (len(c), V)
        out[i, : len(c)] = logits.log_softmax(-1).gather(-1, c.unsqueeze(-1)).squeeze(-1)
    return out


def batch(tok):
    prompts = [[tok.bos_token_id or 1, 5, 6, 7, 8], [9, 10, 11]]  # different lengths: left padding matters
    completions = torch.tensor([[20, 21, 22, 2], [23, 2, 0, 0], [24, 25, 26, 27], [28, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).float()
    group_index = torch.tensor([0, 0, 1, 1])
    return prompts, completions, mask, group_index


def test_shared_prefix_matches_unshared_logprobs_and_gradients(tiny):
    # float64, so any disagreement is a real difference, not rounding
    model, tok = copy.deepcopy(tiny[0]).double(), tiny[1]
    prompts, completions, mask, gi = batch(tok)
    pb = PromptBatch.from_lists(prompts, tok.pad_token_id)
    adv = torch.randn(mask.shape, dtype=torch.float64)

    model.zero_grad()
    shared, _ = completion_logprobs(model, pb, completions, mask, gi, temperature=0.7, chunk_size=3)
    (shared * adv * mask).sum().backward()
    g_shared = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    ref = unshared_logprobs(model, prompts, completions, mask, gi, temperature=0.7)
    (ref * adv * mask).sum().backward()
    assert torch.allclose(shared * mask, ref * mask, atol=1e-10)
    for n, p in model.named_parameters():
        # Observed agreement: ~1e-7 of the largest entry (some attention/RoPE internals run in fp32).
        scale = float(p.grad.abs().max())
        assert torch.allclose(g_shared[n], p.grad, atol=1e-6 * scale, rtol=0), n


def test_chunked_head_matches_full_softmax(tiny):
    model, _ = tiny
    hidden = torch.randn(11, model.config.hidden_size)
    targets = torch.randint(0, model.config.vocab_size, (11,))
    logp, ent = head_logprobs(model, hidden, targets, temperature=1.3, chunk_size=4)
    logits = model.get_output_embeddings()(hidden) / 1.3
    full = logits.log_softmax(-1)
    assert torch.allclose(logp, full.gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent, -(full.exp() * full).sum(-1), atol=1e-4)


def test_bf16_logprobs_stay_close_to_fp32(tiny):
    model, tok = tiny
    prompts, completions, mask, gi = batch(tok)
    pb = PromptBatch.from_lists(prompts, tok.pad_token_id)
    with torch.no_grad():
        fp32, _ = completion_logprobs(model, pb, completions, mask, gi)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = completion_logprobs(model, pb, completions, mask, gi, fp32_head=True)
    # bf16 activations with an fp32 output layer: log-probs within 0.05 nats on this model
    assert float(((fp32 - bf16).abs() * mask).max()) < 0.05
