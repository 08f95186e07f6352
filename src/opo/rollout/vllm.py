"""A rollout engine on vLLM, colocated in the training process.

The engine is built from the policy's config alone (``load_format="dummy"``) and takes every
weight from the live policy through vLLM's in-place reload (``reload_weights``), which also redoes
the backend's own weight processing (the CPU backend repacks linear layers, so writing into its
parameters, as TRL does on GPUs, fails there). The first sync happens at construction, so the
sampler never sees weights the trainer does not have, also after a resume.

Rollouts keep opo's contract: token ids, the sampler's log-probs of the tempered distribution it
drew from (``logprobs_mode="processed_logprobs"``), ``stop``/``length`` finish reasons, every end
id of the model, and no sampling defaults of vLLM or of the model's ``generation_config``
(``generation_config="vllm"``, explicit top-k/top-p/min-p/penalties). The K samples of a prompt are
one request (``n=K``) and share its prefix cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional

import torch
from transformers import PreTrainedModel

from opo.distributed import full_tensor
from opo.lora import lora_layers, merged_parameters
from opo.rollout.base import Rollout, RolloutBatch

INSTALL_HINT = ("the vLLM engine needs vLLM: on a CUDA machine `pip install 'opo-rl[vllm]'`; on CPU, "
                "scripts/setup_vllm.sh builds .venv-vllm with vLLM's CPU build and opo (docs/vllm.md)")


def import_vllm() -> Any:
    """The ``vllm`` module, in-process (no engine-core subprocess: the policy's weights are here)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU backend (its default: 4)
    # vLLM's warnings here are about what opo chose (no tokenizer, thread binding) and fill a console
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm
    except ImportError as e:  # a ValueError: the CLI reports input errors in one line (exit 2)
        raise ValueError(f"rollout engine 'vllm': {INSTALL_HINT} ({e})") from None
    return vllm


class VLLMEngine:
    """Sample from a vLLM copy of ``policy``, refreshed by :meth:`sync_weights`.

    ``dtype``: ``float32`` or ``bfloat16`` (vLLM's own weights; the policy stays as it is);
    ``max_model_len``: the longest prompt + completion; ``memory``: share of GPU memory for vLLM's
    weights and KV cache; ``sleep``: :meth:`offload` releases that memory for the update (CUDA only);
    ``eager``: no CUDA graphs / compilation (start-up of seconds instead of a minute).
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        stop_ids: list[int],
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        memory: float = 0.5,
        sleep: bool = False,
        eager: bool = True,
        seed: int = 0,
    ) -> None:
        vllm = import_vllm()
        self.policy = policy
        self.stop_ids = sorted(set(stop_ids))
        self.generator = torch.Generator().manual_seed(seed)  # per-request seeds come from it (resume-exact)
        self.sleep = sleep
        self.max_model_len, self.dtype = max_model_len, dtype
        self._config_dir = tempfile.mkdtemp(prefix="opo-vllm-")
        try:
            # config only: vLLM builds the architecture and random weights, then takes the policy's
            policy.config.save_pretrained(self._config_dir)
            threads = torch.get_num_threads()
            self.llm = vllm.LLM(
                model=self._config_dir, load_format="dummy", skip_tokenizer_init=True, dtype=dtype, seed=seed,
                max_model_len=max_model_len, gpu_memory_utilization=memory, enforce_eager=eager,
                enable_sleep_mode=sleep, generation_config="vllm", logprobs_mode="processed_logprobs",
                enable_prefix_caching=True)
            # vLLM's GPU worker lowers torch to 1 thread for serving, which the trainer's CPU work would
            # inherit; its CPU worker instead makes set_num_threads a no-op and keeps the current count
            torch.set_num_threads(threads)
            self._asleep: set[str] = set()  # what sleep mode released: weights, kv_cache
            self.sync_weights()
            self._check_sync()
        except BaseException:
            self.close()
            raise

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Load the policy's current weights into vLLM (sharded weights are gathered: under FSDP every
        process must call it)."""
        self._wake({"weights"})  # the KV cache only when sampling: a lower peak while loading
        # tied weights under every name: vLLM's layer-wise reload re-processes a layer (the CPU backend's
        # packed lm_head) only when its own name arrives; LoRA adapters merged into their layers' weights
        named = ((name, full_tensor(p).detach()) for name, p in self.policy.named_parameters(remove_duplicate=False))
        weights = merged_parameters(named, lora_layers(self.policy))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached prompt states belong to the old weights

    @torch.no_grad()
    def _check_sync(self, tokens: int = 8) -> None:
        """Refuse to start when vLLM did not take the policy's weights: it only warns about weights it
        could not map (a model family whose names it does not know), and would sample from its random
        start. Compares one short sample's log-probs with the policy's own forward: an fp32 copy agrees
        to ~1e-5 per token, a bf16 one to ~0.1 on this arbitrary prompt (0.12 measured for the
        embedded model), weights left at random by several nats."""
        tolerance = 0.05 if self.dtype == "float32" else 0.5
        prompt, state = list(range(1, 9)), self.generator.get_state()
        r = self.generate([prompt], [0], 1, tokens, 1.0).rollouts[0]
        self.generator.set_state(state)  # the check draws no seed of the run
        ids = torch.tensor([prompt + r.completion], device=next(self.policy.parameters()).device)
        logits = self.policy(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (L, V)
        trainer = logits.log_softmax(-1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1).cpu()  # (L,)
        gap = float((trainer - torch.tensor(r.logprobs)).abs().mean())
        if gap > tolerance:
            raise ValueError(f"rollout.engine=vllm: vLLM's log-probs differ from the policy's by {gap:.3f} per token "
                             f"after loading its weights (at most {tolerance} expected): vLLM did not take some of "
                             f"{type(self.policy).__name__}'s weights; set VLLM_LOGGING_LEVEL=WARNING to see which, "
                             "or use rollout.engine=hf")

    def offload(self) -> None:
        """Give the accelerator's memory to the update (sleep mode: weights to host memory, KV cache
        dropped) until the next :meth:`sync_weights`; nothing without ``sleep``."""
        if self.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def generate(
        self, prompts: list[list[int]], groups: list[int], samples: int, max_new_tokens: int, temperature: float,
        prefixes: Optional[list[list[int]]] = None,
    ) -> RolloutBatch:
        """``samples`` completions of each prompt; ``temperature=0`` decodes greedily."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if prefixes is not None:
            raise NotImplementedError("the vLLM engine does not force completion prefixes (hybrid thinking's mode "
                                      "tags) yet: use rollout.engine=hf")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake({"weights", "kv_cache"})
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=self.generator).tolist()
        params = [SamplingParams(
            n=samples, temperature=temperature, max_tokens=max_new_tokens, seed=s, logprobs=0,
            top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            stop_token_ids=self.stop_ids, ignore_eos=False, skip_special_tokens=False, detokenize=False,
        ) for s in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        rollouts = []
        for prompt, group, out in zip(prompts, groups, outputs):
            for c in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(c.token_ids)
                logps = [step[t].logprob for step, t in zip(c.logprobs, tokens)]
                stopped = bool(tokens) and tokens[-1] in self.stop_ids
                rollouts.append(Rollout(list(prompt), tokens, logps, "stop" if stopped else "length", group))
        return RolloutBatch(rollouts)

    def _wake(self, tags: set[str]) -> None:
        if tags & self._asleep:
            self.llm.wake_up(tags=sorted(tags & self._asleep))
            self._asleep -= tags

    def close(self) -> None:
        shutil.rmtree(self._config_dir, ignore_errors=True)
