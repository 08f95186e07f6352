"""Per-token log-probs and entropy of completions, with each prompt computed once per group.

The K completions of one prompt share that prompt's forward pass: the prompts run once with a
KV cache, the cache rows are gathered per completion, and the completions attend to them. The
gather is differentiable, so gradients flow into the prompt pass exactly as in the unshared
computation (tests/test_logprobs.py checks this in fp32). Logits are only computed for response
positions, in chunks, under activation checkpointing: no ``(N, T, V)`` fp32 tensor ever exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel


@dataclass
class PromptBatch:
    """Left-padded prompts: ids and mask ``(G, Lp)``, positions ``(G, Lp)``, real lengths ``(G,)``."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_lists(cls, prompts: list[list[int]], pad_id: int) -> "PromptBatch":
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(ids, mask, positions, mask.sum(-1))


def prefill(model: PreTrainedModel, prompts: PromptBatch) -> tuple[torch.Tensor, DynamicCache]:
    """Run the prompts once: last hidden state ``(G, H)`` and the KV cache."""
    out = model.get_decoder()(
        input_ids=prompts.ids,
        attention_mask=prompts.mask,
        position_ids=prompts.positions,
        past_key_values=DynamicCache(config=model.config),
        use_cache=True,
    )
    return out.last_hidden_state[:, -1], out.past_key_values


def head_logprobs(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
    with_entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` ``(M,)`` and entropy ``(M,)`` from final hidden states ``(M, H)``.

    Logits are scaled by 1/temperature so the trainer scores the distribution the sampler drew
    from. Each chunk's logits are recomputed in backward instead of stored. The entropy carries
    gradient only when ``with_entropy_grad`` (an entropy bonus is on).
    """
    head = model.get_output_embeddings()

    def chunk_fn(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(head.weight.dtype, torch.float32)  # fp32, or fp64 in exactness tests
        if fp32_head:
            with torch.autocast(device_type=h.device.type, enabled=False):
                logits = F.linear(h.to(dtype), head.weight.to(dtype), None if head.bias is None else head.bias.to(dtype))
        else:
            logits = head(h).to(dtype)
        logits = logits / temperature  # (C, V)
        lse = torch.logsumexp(logits, dim=-1)  # (C,)
        logp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - lse
        if with_entropy_grad:
            ent = lse - (logits.softmax(-1) * logits).sum(-1)
        else:
            with torch.no_grad():
                ent = lse - (logits.softmax(-1) * logits).sum(-1)
        return logp, ent

    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, en = checkpoint(chunk_fn, h, y, use_reentrant=False)
        else:
            lp, en = chunk_fn(h, y)
        logps.append(lp)
        ents.append(en)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def completion_logprobs(
    model: PreTrainedModel,
    prompts: PromptBatch,
    completions: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
    with_entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies ``(N, T)`` of right-padded ``completions`` ``(N, T)``.

    ``group_index`` ``(N,)`` gives each completion's row in ``prompts``; ``mask`` ``(N, T)`` marks
    real completion tokens (zeros are returned elsewhere).
    """
    n, t = completions.shape
    last_hidden, cache = prefill(model, prompts)  # (G, H)
    hidden = last_hidden[group_index].unsqueeze(1)  # (N, 1, H): predicts the first completion token
    if t > 1:
        cache.batch_select_indices(group_index)
        inputs = completions[:, :-1]  # (N, T-1)
        # Right padding after EOS is harmless under causal attention: real tokens never see it.
        attn = torch.cat([prompts.mask[group_index], torch.ones_like(inputs)], dim=1)
        positions = prompts.lengths[group_index].unsqueeze(1) + torch.arange(t - 1).unsqueeze(0)
        out = model.get_decoder()(
            input_ids=inputs, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True
        )
        hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # (N, T, H)
    sel = mask.bool()
    logp_flat, ent_flat = head_logprobs(
        model, hidden[sel], completions[sel], temperature, chunk_size, fp32_head, with_entropy_grad
    )
    logp = logp_flat.new_zeros((n, t)).masked_scatter(sel, logp_flat)
    ent = ent_flat.new_zeros((n, t)).masked_scatter(sel, ent_flat)
    return logp, ent
