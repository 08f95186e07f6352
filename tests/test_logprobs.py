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


def fp64(model):
    """A float64 copy: any disagreement is then a real difference, not rounding. Attention is sdpa,
    because in float64 eager attention's mask saturates to -inf on left-padding rows (NaN)."""
    model = copy.deepcopy(model).double()
    model.set_attn_implementation("sdpa")
    return model


def batch(tok):
    prompts = [[tok.bos_token_id or 1, 5, 6, 7, 8], [9, 10, 11]]  # different lengths: left padding matters
    completions = torch.tensor([[20, 21, 22, 2], [23, 2, 0, 0], [24, 25, 26, 27], [28, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).float()
    group_index = torch.tensor([0, 0, 1, 1])
    return prompts, completions, mask, group_index


def test_shared_prefix_matches_unshared_logprobs_and_gradients(tiny):
    # float64, so any disagreement is a real difference, not rounding
    model, tok = fp64(tiny[0]), tiny[1]
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


def test_chunked_head_matches_full_softmax_values_and_gradients(tiny):
    # float64: the hand-written backward must equal autograd through a full log-softmax
    head = fp64(tiny[0])
    hidden = torch.randn(11, head.config.hidden_size, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, head.config.vocab_size, (11,))
    g_lp, g_ent = torch.randn(11, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    weight = head.get_output_embeddings().weight

    logp, ent = head_logprobs(head, hidden, targets, temperature=1.3, chunk_size=4, with_entropy_grad=True)
    (logp * g_lp + ent * g_ent).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None

    full = (head.get_output_embeddings()(hidden) / 1.3).log_softmax(-1)  # (11, V)
    ref_lp = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(full.exp() * full).sum(-1)
    (ref_lp * g_lp + ref_ent * g_ent).sum().backward()
    assert torch.allclose(logp, ref_lp, atol=1e-12)
    assert torch.allclose(ent, ref_ent, atol=1e-12)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-12)
    assert torch.allclose(grads[1], weight.grad, atol=1e-12)


def test_entropy_carries_no_gradient_unless_asked(tiny):
    model = tiny[0]
    hidden = torch.randn(5, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (5,))
    logp, ent = head_logprobs(model, hidden, targets)
    assert logp.requires_grad and not ent.requires_grad


def test_length_buckets_match_one_padded_batch(tiny):
    # Completions sorted into length buckets (no compute on most padding) vs one padded batch: same
    # log-probs and same gradients, in float64.
    model, tok = fp64(tiny[0]), tiny[1]
    prompts, completions, mask, gi = batch(tok)
    pb = PromptBatch.from_lists(prompts, tok.pad_token_id)
    adv = torch.randn(mask.shape, dtype=torch.float64)
    results = []
    for bucket_tokens in (1, 10**6):  # 1: every completion its own bucket; 10**6: one bucket
        model.zero_grad()
        logp, ent = completion_logprobs(model, pb, completions, mask, gi, bucket_tokens=bucket_tokens)
        (logp * adv * mask).sum().backward()
        results.append((logp, ent, [p.grad.clone() for p in model.parameters()]))
    (lp1, en1, g1), (lp2, en2, g2) = results
    assert torch.allclose(lp1, lp2, atol=1e-12) and torch.allclose(en1, en2, atol=1e-10)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10 * float(b.abs().max()), rtol=0)


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


def test_eager_and_sdpa_attention_agree(tiny):
    # The default kernel is eager (faster in bf16 on CPU); it must score exactly what sdpa scores.
    prompts, completions, mask, gi = batch(tiny[1])
    pb = PromptBatch.from_lists(prompts, tiny[1].pad_token_id)
    out = {}
    for kernel in ("eager", "sdpa"):
        model = copy.deepcopy(tiny[0])
        model.set_attn_implementation(kernel)
        with torch.no_grad():
            out[kernel], _ = completion_logprobs(model, pb, completions, mask, gi)
    assert torch.allclose(out["eager"], out["sdpa"], atol=1e-5)


def test_fp32_head_under_autocast_keeps_fp32_logprobs_and_bf16_level_gradients(tiny):
    # Under bf16 autocast the head's log-probs stay fp32; only its two gradient matmuls run in
    # bf16, as every other layer's backward does.
    head = tiny[0]
    hidden = torch.randn(300, head.config.hidden_size)
    targets = torch.randint(0, head.config.vocab_size, (300,))
    g = torch.randn(300)
    weight = head.get_output_embeddings().weight
    out = {}
    for mode in ("fp32", "bf16"):
        h = hidden.clone().requires_grad_(True)
        weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logp, _ = head_logprobs(head, h, targets, chunk_size=64)
        (logp * g).sum().backward()
        out[mode] = (logp.detach(), h.grad, weight.grad.clone())
    assert torch.equal(out["fp32"][0], out["bf16"][0])
    for ref, got in zip(out["fp32"][1:], out["bf16"][1:]):
        assert float((got - ref).norm() / ref.norm()) < 1e-2  # bf16 carries ~3 significant digits
