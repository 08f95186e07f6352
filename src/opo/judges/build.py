"""The judge a config names."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from opo.config import JudgeConfig
from opo.judges.base import Judge
from opo.judges.verdict import DEFAULT_TEMPLATE


def build_judge(j: JudgeConfig, *, sampling: str = "fp32", seed: int = 0, cache: Optional[Path] = None,
                device: str = "cpu") -> Judge:
    """``judge.backend``'s judge: ``local`` loads ``judge.model`` beside the policy (sampled in the
    ``sampling`` precision, on the policy's resolved ``device``: cpu | cuda); ``http`` keeps its
    answers in ``cache`` (JSONL), if given, so a resumed run does not pay for them twice."""
    template = j.template or DEFAULT_TEMPLATE
    if j.backend == "local":
        from opo.judges.local import LocalJudge
        from opo.models import load_model, stop_token_ids
        from opo.rollout.hf import HFEngine
        from opo.runtime import torch_device

        model, tok = load_model(j.model, seed=seed)
        model.eval().requires_grad_(False).to(torch_device(device))
        engine = HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, sampling, seed=seed)
        return LocalJudge(j.model, engine, tok, max_new_tokens=j.max_new_tokens, temperature=j.temperature,
                          batch_size=j.batch_size, template=template, system_prompt=j.system_prompt)
    if j.backend == "http":
        from opo.judges.http import HTTPJudge

        return HTTPJudge(j.base_url or "", j.model, api_key_env=j.api_key_env, max_tokens=j.max_new_tokens,
                         temperature=j.temperature, concurrency=j.concurrency, timeout=j.timeout, retries=j.retries,
                         cache_path=cache, template=template, system_prompt=j.system_prompt)
    raise ValueError(f"judge.backend={j.backend!r} names no judge")
