"""A sampling engine on plain transformers modules.

Unlike ``model.generate`` it computes each prompt once per group and shares the prompt's KV
cache across the K samples, drops finished sequences from the batch, records the sampler's
log-probs as it goes, and applies no hidden generation defaults (``generate`` would use a
model's own ``top_k``/repetition settings, which silently break exact on-policy sampling).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from opo.distributed import full_tensor
from opo.logprobs import LogitTransform, PromptBatch, prefill, run_decoder
from opo.rollout.base import Rollout, RolloutBatch
from opo.runtime import model_device


class HFEngine:
    """Sample from a causal LM with a shared-prefix KV cache.

    With ``precision="bf16"`` it samples from a bf16 copy of the policy (the numerics of the
    trainer's bf16 autocast, without re-casting every weight at every decoding step);
    :meth:`sync_weights` refreshes the copy and must follow every optimizer step. With ``"fp32"``
    it samples from the policy itself, unless ``separate``: then from a full fp32 copy, as a
    policy whose weights will be sharded across processes (FSDP) needs; build the engine before
    sharding. It computes on the policy's device; its random generator stays on the CPU, so a seed
    draws the same uniforms on any device.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        stop_ids: list[int],
        pad_id: int,
        precision: str = "fp32",
        *,
        seed: int = 0,
        separate: bool = False,
    ) -> None:
        self.policy = model
        self.model = model
        if precision == "bf16" or separate:
            self.model = copy.deepcopy(model).requires_grad_(False)
            if precision == "bf16":
                # Parameters only: buffers that are not weights (the rotary ``inv_freq``) stay fp32, as
                # in the trainer; bf16 frequencies put the rotary angle off by ~0.8 rad at position 600.
                for p in self.model.parameters():
                    p.data = p.data.to(torch.bfloat16)
        # Logits come from an fp32 output layer, as the trainer's fp32 head: the policy's own, or a
        # copy when the policy's will be sharded.
        head = model.get_output_embeddings()
        self.head = copy.deepcopy(head).float().requires_grad_(False) if separate else head
        self.transform = LogitTransform.from_config(model.config)  # the family's softcap or scale, if any
        self.device = model_device(model)
        self.stop_ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the policy's current weights into the sampling copy (a no-op when sampling from the
        policy). Sharded weights are gathered, a collective call: every process must make it."""
        policy_head = self.policy.get_output_embeddings()
        for copy_, policy in ((self.model, self.policy), (self.head, policy_head)):
            if copy_ is not policy:
                for dst, src in zip(copy_.parameters(), policy.parameters()):
                    if src.requires_grad:  # frozen weights (a LoRA run's base) never change
                        dst.copy_(full_tensor(src))

    def offload(self) -> None:
        """Nothing to give back: the engine samples from the policy's own weights (or a copy of them)."""

    def close(self) -> None:
        """Nothing to release: the engine holds no resources beyond its tensors."""

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own logits ``(A, V)``: the output layer, then its family's transform (a softcap,
        a scale), as the trainer's head computes them; the temperature comes after, in :meth:`_sample`."""
        head = self.head
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            u = F.linear(hidden.to(head.weight.dtype), head.weight, head.bias)  # (A, V)
        return self.transform(u)

    def _sample(self, logits: torch.Tensor, temperature: float, forced: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens ``(A,)`` and their log-probs under the distribution sampled from ``(A,)``;
        rows whose ``forced`` ``(A,)`` token is >= 0 take that token instead of a draw."""
        logp = (logits if temperature == 0.0 else logits / temperature).log_softmax(-1)  # (A, V)
        tok = logits.argmax(-1) if temperature == 0.0 else sample_categorical(logp.exp(), self.generator)
        tok = torch.where(forced >= 0, forced, tok)
        return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], groups: list[int], samples: int, max_new_tokens: int, temperature: float,
        prefixes: Optional[list[list[int]]] = None,
    ) -> RolloutBatch:
        """``samples`` completions of each prompt; ``temperature=0`` decodes greedily. ``prefixes``: a
        forced start of each completion (prompt-major, ``samples`` per prompt), part of the completion
        with its log-prob but not drawn; ``meta["forced"]`` counts its tokens."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = PromptBatch.from_lists(prompts, self.pad_id).to(self.device)
        n = len(prompts) * samples
        forced = _forced_tokens(prefixes, n, max_new_tokens).to(self.device)  # (N, F), -1 where the sampler draws
        row = torch.arange(len(prompts), device=self.device).repeat_interleave(samples)  # (N,) each one's prompt row
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        last_hidden, cache = prefill(self.model, batch)
        logits = self._logits(last_hidden)[row]  # (N, V)
        cache.batch_select_indices(row)
        attn = batch.mask[row]  # (N, Lp + t)
        pos = batch.lengths[row]  # (N,) position of the next token
        active = torch.arange(n, device=self.device)  # sample index of each live row
        for step in range(max_new_tokens):
            tok, lp = self._sample(logits, temperature, forced[active, step] if step < forced.shape[1]
                                   else torch.full_like(active, -1))
            for i, t, l in zip(active.tolist(), tok.tolist(), lp.tolist()):
                tokens[i].append(t)
                logps[i].append(l)
            done = torch.isin(tok, self.stop_ids)
            for i in active[done].tolist():
                finish[i] = "stop"
            keep = ~done
            if step == max_new_tokens - 1 or not keep.any():
                break
            if not keep.all():  # stop computing finished sequences
                idx = keep.nonzero().squeeze(-1)
                cache.batch_select_indices(idx)
                active, tok, attn, pos = active[idx], tok[idx], attn[idx], pos[idx]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            hidden, cache = run_decoder(self.model, tok.unsqueeze(-1), attn, pos.unsqueeze(-1), cache)
            logits = self._logits(hidden[:, -1])
            pos = pos + 1
        rows, n_forced = row.tolist(), (forced >= 0).sum(-1).tolist()  # (N,) each
        rollouts = [
            Rollout(prompts[rows[i]], tokens[i], logps[i], finish[i], groups[rows[i]],
                    {"forced": n_forced[i]} if prefixes is not None else {})
            for i in range(n)
        ]
        return RolloutBatch(rollouts)


def _forced_tokens(prefixes: Optional[list[list[int]]], n: int, max_new_tokens: int) -> torch.Tensor:
    """Forced completion starts as a right-padded ``(N, F)`` table, -1 where the sampler draws."""
    if prefixes is None:
        return torch.full((n, 0), -1, dtype=torch.long)
    if len(prefixes) != n:
        raise ValueError(f"prefixes: one per completion expected ({n}), got {len(prefixes)}")
    width = max(map(len, prefixes), default=0)
    if width > max_new_tokens:
        raise ValueError(f"a forced prefix of {width} tokens does not fit max_new_tokens={max_new_tokens}")
    table = torch.full((n, width), -1, dtype=torch.long)
    for i, p in enumerate(prefixes):
        table[i, :len(p)] = torch.tensor(p, dtype=torch.long)
    return table


def sample_categorical(probs: torch.Tensor, generator: torch.Generator, block: int = 1024) -> torch.Tensor:
    """One token ``(A,)`` per row of ``probs`` ``(A, V)``, by inverting the CDF in float64.

    One uniform per row, where ``torch.multinomial`` draws V exponentials per row (~4x slower at
    V = 49k). Two levels keep it exact and cheap: pick a block of ``block`` tokens from the block
    masses, then a token inside it. Rows need not be normalised; zero-probability tokens are
    never drawn (``right=True`` picks the first token whose CDF exceeds the uniform).
    """
    a, v = probs.shape
    blocks = F.pad(probs, (0, (-v) % block)).view(a, -1, block)  # (A, B, block)
    mass = blocks.sum(-1, dtype=torch.float64)  # (A, B)
    cdf = mass.cumsum(-1)
    # drawn on the generator's device (the CPU), then moved: a seed gives the same uniforms anywhere
    u = torch.rand(a, 1, generator=generator, dtype=torch.float64).to(cdf.device) * cdf[:, -1:]  # (A, 1)
    u = torch.minimum(u, cdf[:, -1:] * (1 - 2**-52))  # rounding must not reach the total
    b = torch.searchsorted(cdf, u, right=True)  # (A, 1) chosen block
    u = (u - (cdf.gather(-1, b) - mass.gather(-1, b))).clamp_(min=0)  # uniform within the block
    inner = blocks[torch.arange(a, device=b.device), b.squeeze(-1)].double().cumsum(-1)  # (A, block)
    u = torch.minimum(u, inner[:, -1:] * (1 - 2**-52))
    return (b * block + torch.searchsorted(inner, u, right=True)).squeeze(-1)
