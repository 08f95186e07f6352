"""Per-token log-probs and entropy of completions, with each prompt computed once per group.

The K completions of one prompt share that prompt's forward pass: the prompts run once with a
KV cache, the cache rows are gathered per completion, and the completions attend to them. The
gather is differentiable, so gradients flow into the prompt pass exactly as in the unshared
computation. Completions run in buckets of similar length, so little compute goes to padding.
Logits exist only for response positions, one chunk at a time, with a hand-written backward:
no ``(N, T, V)`` tensor ever exists. tests/test_logprobs.py checks each of these against the
plain computation in fp64.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel


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

    def to(self, device: torch.device) -> "PromptBatch":
        """The batch on ``device`` (the model's): built on the CPU, it computes where the model is."""
        return PromptBatch(*(t.to(device) for t in (self.ids, self.mask, self.positions, self.lengths)))


def run_decoder(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
) -> tuple[torch.Tensor, DynamicCache]:
    """Hidden states ``(B, L, H)`` of ``ids`` ``(B, L)`` continuing ``cache`` (extended in place).

    transformers renamed the decoder's ``past_key_values`` to ``cache`` in 5.x (the old name goes
    away in 5.40); the decoder's own signature says which name this version takes.
    """
    decoder = model.get_decoder()
    name = _cache_argument(type(decoder))
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache})
    new_cache = getattr(out, "cache", None)
    return out.last_hidden_state, out.past_key_values if new_cache is None else new_cache


@functools.cache
def _cache_argument(decoder_type: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_type.forward).parameters else "past_key_values"


def prefill(model: PreTrainedModel, prompts: PromptBatch) -> tuple[torch.Tensor, DynamicCache]:
    """Run the prompts once: last hidden state ``(G, H)`` and the KV cache."""
    hidden, cache = run_decoder(model, prompts.ids, prompts.mask, prompts.positions, DynamicCache(config=model.config))
    return hidden[:, -1], cache


@dataclass(frozen=True)
class LogitTransform:
    """What a model's own forward does to its output layer's logits ``u``: ``z = scale * u``, then,
    with a ``softcap``, ``z = softcap * tanh(z / softcap)``. opo's sampler and trainer apply it, so
    they score the model's distribution and not the bare output layer's.
    """

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> LogitTransform:
        """The transform of ``config.model_type``'s forward; the identity for families not in
        ``_LOGIT_TRANSFORMS`` (opo.models.check_reproducible_logits verifies that at load time)."""
        rule = _LOGIT_TRANSFORMS.get(config.model_type)
        return cls() if rule is None else rule(config.get_text_config())

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """The model's logits from the output layer's ``u`` ``(..., V)``: ``u`` itself (no copy) for the identity."""
        z = u * self.scale if self.scale != 1.0 else u
        if self.softcap is not None:
            z = (z / self.softcap).tanh_().mul_(self.softcap)
        return z

    def with_slope(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(self(u), slope)`` with dz/du = scale * slope: ``1 - tanh^2(scale * u / softcap)``
        ``(..., V)`` from the same tanh, or None (a slope of 1) without a softcap."""
        if self.softcap is None:
            return self(u), None
        z = u * self.scale if self.scale != 1.0 else u
        t = (z / self.softcap).tanh_()  # (..., V)
        return t * self.softcap, t.square_().neg_().add_(1)


# Each family's logit transform as its ``*ForCausalLM.forward`` computes it, from the attributes
# that forward reads (transformers/models/<family>/modeling_<family>.py). Each entry is checked
# against the model's own forward in tests/test_logit_transforms.py.
_LOGIT_TRANSFORMS: dict[str, Callable[[PretrainedConfig], LogitTransform]] = {
    # modeling_gemma2.py, modeling_gemma3.py (Gemma3ForCausalLM), modeling_vaultgemma.py,
    # modeling_nanochat.py, modeling_beam.py: cap * tanh(logits / cap)
    "gemma2": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    "gemma3_text": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    "vaultgemma": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    "nanochat": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    "beam": lambda c: LogitTransform(softcap=c.final_logit_softcapping),
    # modeling_granite.py, modeling_granite_swa.py: logits / logits_scaling
    "granite": lambda c: LogitTransform(scale=1.0 / c.logits_scaling),
    "granite_swa": lambda c: LogitTransform(scale=1.0 / c.logits_scaling),
    # modeling_cohere.py, modeling_cohere2.py: logits * logit_scale
    "cohere": lambda c: LogitTransform(scale=c.logit_scale),
    "cohere2": lambda c: LogitTransform(scale=c.logit_scale),
}


class _ChunkedHead(torch.autograd.Function):
    """Target log-prob and entropy per row from hidden states, one chunk of logits at a time.

    Forward keeps only the hidden states, each row's log-normaliser and entropy; backward
    recomputes a chunk's logits ``z`` ``(C, V)`` (the model's ``transform`` of the output layer's
    ``u``, over the temperature) and applies the closed forms (p = softmax(z), H its entropy)
        d logp_y / dz = onehot(y) - p,        dH / dz = -p * (log p + H),
    then the chain rule through z = T(u) / tau, so no ``(M, V)`` tensor and no autograd graph of
    the log-softmax is stored. Logits and the softmax are computed in ``dtype``; the two gradient
    matmuls run in ``grad_dtype`` (the autocast dtype under autocast, as every other layer's
    backward). 512-row chunks (~100 MB of fp32 logits) measured fastest here once large blocks are
    reused (opo.runtime).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, temperature, chunk_size, dtype, grad_dtype):  # type: ignore[override]
        logps, ents, lses = [], [], []
        for start in range(0, hidden.shape[0], chunk_size):
            z = transform(_chunk_logits(hidden[start : start + chunk_size], weight, bias, dtype))  # (C, V)
            z = z / temperature if temperature != 1.0 else z  # after the model's transform, as in generate
            m = z.amax(-1, keepdim=True)  # (C, 1)
            e = (z - m).exp_()  # (C, V) unnormalised probabilities
            total = e.sum(-1)  # (C,)
            lse = m.squeeze(-1) + total.log()
            y = targets[start : start + chunk_size]
            logps.append(z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - lse)
            expected_z = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1) / total  # sum_v p_v z_v
            ents.append(lse - expected_z)
            lses.append(lse)
        logp, ent, lse = torch.cat(logps), torch.cat(ents), torch.cat(lses)  # (M,) each
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.transform, ctx.temperature, ctx.chunk_size = transform, temperature, chunk_size
        ctx.dtype, ctx.grad_dtype = dtype, grad_dtype
        ctx.set_materialize_grads(False)  # an unused output (usually the entropy) costs nothing in backward
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):  # type: ignore[override]
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        dtype, gdtype, transform, tau = ctx.dtype, ctx.grad_dtype, ctx.transform, ctx.temperature
        acc = lse.dtype  # softmax arithmetic: fp32 at least
        # z = T(u) / tau with u = h W^T + b: dz/du = (scale / tau) * slope(u). The constant folds
        # into the incoming gradients; a softcap's slope multiplies each chunk's gradient.
        factor = transform.scale / tau
        g_logp = (torch.zeros_like(lse) if g_logp is None else g_logp.to(acc)) * factor
        g_ent = None if g_ent is None else g_ent.to(acc) * factor
        w = weight.to(gdtype)
        g_hidden = torch.empty_like(hidden)
        g_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        g_bias = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=weight.device)
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            sl = slice(start, start + ctx.chunk_size)
            z, slope = transform.with_slope(_chunk_logits(hidden[sl], weight, bias, dtype))  # (C, V) each
            # in place: z is this chunk's own tensor, and no second (C, V) stays alive
            logp_all = (z.div_(tau) if tau != 1.0 else z).sub_(lse[sl].unsqueeze(-1))  # (C, V)
            if g_ent is None:
                g_z = logp_all.exp_().mul_(-g_logp[sl].unsqueeze(-1))  # -p g
            else:
                p = logp_all.exp()
                coeff = logp_all.add_(ent[sl].unsqueeze(-1)).mul_(-g_ent[sl].unsqueeze(-1))  # -(log p + H) g_H
                g_z = p.mul_(coeff.sub_(g_logp[sl].unsqueeze(-1)))
            g_z.scatter_add_(-1, targets[sl].unsqueeze(-1), g_logp[sl].unsqueeze(-1))
            if slope is not None:
                g_z.mul_(slope)  # now d/du
            if g_bias is not None:
                g_bias += g_z.sum(0)
            g_z, h = g_z.to(gdtype), hidden[sl].to(gdtype)
            with torch.autocast(device_type=h.device.type, enabled=False):
                g_hidden[sl] = (g_z @ w).to(hidden.dtype)
                if gdtype == acc:
                    g_weight.addmm_(g_z.T, h)  # in place: no (V, H) temporary per chunk
                else:
                    g_weight += g_z.T @ h
        g_bias = None if g_bias is None else g_bias.to(bias.dtype)
        return g_hidden, g_weight.to(weight.dtype), g_bias, None, None, None, None, None, None


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias, dtype: torch.dtype) -> torch.Tensor:
    """Output-layer logits ``(C, V)`` for hidden states ``(C, H)``: the matmul in ``dtype``, the result in fp32 at least."""
    with torch.autocast(device_type=h.device.type, enabled=False):
        u = F.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return u.to(torch.promote_types(dtype, torch.float32))


def head_logprobs(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 512,
    fp32_head: bool = True,
    with_entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` ``(M,)`` and entropy ``(M,)`` from final hidden states ``(M, H)``.

    Logits are the model's own (its family's :class:`LogitTransform`) scaled by 1/temperature, so
    the trainer scores the distribution the sampler drew from. The output layer runs in fp32 (fp64
    for an fp64 model) when ``fp32_head``, else in the autocast dtype with an fp32 log-softmax;
    under autocast its gradient matmuls run in the autocast dtype. The entropy carries gradient
    only when ``with_entropy_grad`` (an entropy bonus is on).
    """
    head = model.get_output_embeddings()
    dtype = grad_dtype = torch.promote_types(head.weight.dtype, torch.float32)
    if torch.is_autocast_enabled(hidden.device.type):
        # the gradient matmuls in the autocast dtype, as every other layer's backward
        grad_dtype = torch.get_autocast_dtype(hidden.device.type)
        if not fp32_head:
            dtype = grad_dtype
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.promote_types(dtype, torch.float32))
        return empty, empty
    transform = LogitTransform.from_config(model.config)
    logp, ent = _ChunkedHead.apply(
        hidden, head.weight, head.bias, targets, transform, temperature, chunk_size, dtype, grad_dtype
    )
    return logp, ent if with_entropy_grad else ent.detach()
def length_buckets(lengths: torch.Tensor, bucket_tokens: int) -> list[torch.Tensor]:
    """Row indices grouped so that rows of similar length share a forward pass.

    Rows are sorted by length (longest first) and cut into buckets of at most ``bucket_tokens``
    padded tokens (rows x longest row); padding is then only the spread of lengths within a bucket.
    """
    order = lengths.argsort(descending=True, stable=True).tolist()
    values = lengths.tolist()  # read once: on a GPU each element read would wait for the device
    buckets: list[list[int]] = []
    for i in order:
        if buckets and (len(buckets[-1]) + 1) * int(values[buckets[-1][0]]) <= bucket_tokens:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return [torch.tensor(b, dtype=torch.long) for b in buckets]


def _select_cache(cache: DynamicCache, rows: torch.Tensor, config) -> DynamicCache:
    """A new cache holding rows ``rows`` of ``cache`` (differentiable; ``cache`` is left as is)."""
    out = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[rows], layer.values[rows], i)
    return out


def decoder_calls(mask: torch.Tensor, bucket_tokens: int = 2048) -> int:
    """Decoder calls :func:`completion_logprobs` makes for a response mask ``(N, T)``: the prompts
    once, then one per length bucket whose longest completion has more than one token."""
    lengths = mask.sum(-1).long()  # (N,)
    return 1 + sum(int(lengths[b[0]]) > 1 for b in length_buckets(lengths, bucket_tokens))


def _filler_call(model: PreTrainedModel, token: torch.Tensor) -> torch.Tensor:
    """One decoder call on ``token`` ``(1, 1)`` whose result (0, in the graph) only keeps FSDP's
    gathers paired across processes."""
    out, _ = run_decoder(model, token, torch.ones_like(token), torch.zeros_like(token), DynamicCache(config=model.config))
    return 0.0 * out.sum()


def _bucket_hidden(model: PreTrainedModel, prompts: PromptBatch, last_hidden: torch.Tensor, cache: DynamicCache,
                   inputs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Hidden states ``(b, w, H)`` predicting a bucket's completion tokens: the prompt's last one,
    then one decoder call over the completion's first ``w - 1`` tokens ``inputs`` ``(b, w-1)``
    against rows ``g`` of the prompt cache (none when ``w == 1``)."""
    hidden = last_hidden[g].unsqueeze(1)  # (b, 1, H): predicts the first completion token
    if inputs.shape[1] == 0:
        return hidden
    # Right padding after a short row's end is harmless under causal attention.
    attn = torch.cat([prompts.mask[g], torch.ones_like(inputs)], dim=1)
    positions = prompts.lengths[g].unsqueeze(1) + torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)
    out, _ = run_decoder(model, inputs, attn, positions, _select_cache(cache, g, model.config))
    return torch.cat([hidden, out], dim=1)


def completion_logprobs(
    model: PreTrainedModel,
    prompts: PromptBatch,
    completions: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 512,
    fp32_head: bool = True,
    with_entropy_grad: bool = False,
    bucket_tokens: int = 2048,
    min_decoder_calls: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies ``(N, T)`` of right-padded ``completions`` ``(N, T)``.

    ``group_index`` ``(N,)`` gives each completion's row in ``prompts``; ``mask`` ``(N, T)`` marks
    real completion tokens (zeros are returned elsewhere). The prompts run once; the completions
    run in length buckets (see :func:`length_buckets`), each attending to its rows of the prompt cache.
    Every tensor argument is on the model's device, as are the results.

    ``min_decoder_calls``: under FSDP every decoder layer gathers its weights at every call (and
    again in backward), so processes must make equally many calls (:func:`decoder_calls` counts
    them). Missing calls run one token each, after the real ones, and join the graph with weight 0.
    """
    n, t = completions.shape
    last_hidden, cache = prefill(model, prompts)  # (G, H)
    calls = 1
    lengths = mask.sum(-1).long()  # (N,)
    hiddens, targets, dest = [], [], []
    for rows in length_buckets(lengths, bucket_tokens):
        rows = rows.to(completions.device)
        w = int(lengths[rows[0]])  # the bucket's longest completion
        if w == 0:
            continue
        hidden = _bucket_hidden(model, prompts, last_hidden, cache, completions[rows, : w - 1], group_index[rows])
        calls += w > 1
        sel = mask[rows, :w].bool()  # (b, w)
        hiddens.append(hidden[sel])
        targets.append(completions[rows, :w][sel])
        positions = torch.arange(w, device=rows.device).unsqueeze(0)  # (1, w)
        dest.append((rows.unsqueeze(1) * t + positions)[sel])  # flat (row, position)
    if calls > min_decoder_calls > 0:  # decoder_calls disagrees with the loop above: FSDP would hang
        raise RuntimeError(f"{calls} decoder calls where {min_decoder_calls} were agreed")
    fillers = [_filler_call(model, prompts.ids[:1, -1:]) for _ in range(min_decoder_calls - calls)]
    if not hiddens:
        zeros = torch.zeros((n, t), device=completions.device)
        return zeros, zeros
    logp_flat, ent_flat = head_logprobs(
        model, torch.cat(hiddens), torch.cat(targets), temperature, chunk_size, fp32_head, with_entropy_grad
    )
    if fillers:
        logp_flat = logp_flat + sum(fillers)
    dest_all = torch.cat(dest)
    logp = logp_flat.new_zeros(n * t).scatter(0, dest_all, logp_flat).view(n, t)
    ent = ent_flat.new_zeros(n * t).scatter(0, dest_all, ent_flat).view(n, t)
    return logp, ent
