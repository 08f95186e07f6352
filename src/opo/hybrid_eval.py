"""Evaluation of a hybrid-thinking model: when does it think, and is that the right choice?

For each held-out problem, ``n`` responses are sampled in each mode (the mode tag forced) and graded;
the mode with the higher mean reward is the problem's reference mode, and when the two means are
within a margin, the mode with the shorter responses. The model then answers freely (greedy) and
its first token shows which mode it chose. Hybrid Accuracy (HAcc, arXiv 2505.14631, Eq. 13) is the
share of problems where the choice equals the reference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from statistics import mean
from typing import Any, Callable, Optional

from tqdm import tqdm

from opo.config import HybridConfig
from opo.distributed import Dist
from opo.hybrid import MODE_NAMES, NO_THINK, THINK, ModeTokens, difficulty, shown_text
from opo.rollout.base import Engine
from opo.tasks.base import Example, Task
from opo.tasks.chat import encode


@dataclass
class HybridSample:
    problem: int
    kind: str  # "think" | "no_think" (mode forced, sampled) | "free" (the model's choice, greedy)
    mode: Optional[str]  # the mode the response is in: "think", "no_think", or None (no tag)
    completion: str  # the whole response, tags shown
    answer: Optional[str]
    reference: str
    reward: float
    correct: bool
    status: str
    finish: str
    length: int


def evaluate_hybrid(
    engine: Engine, tokenizer: Any, task: Task, modes: ModeTokens, h: HybridConfig, *, temperature: float,
    max_new_tokens: int, batch_size: int = 64, dist: Dist = Dist(),
    on_samples: Optional[Callable[[list[HybridSample]], None]] = None, progress: bool = False,
) -> tuple[dict[str, float], list[HybridSample]]:
    """HAcc, think rates, accuracy and length per mode and for the model's own choice (flat keys:
    ``eval/accuracy`` and ``eval/length`` are the free answers', the rest ``hybrid/...``). Under
    torch.distributed each process answers its share of the problems; all return the whole result."""
    if temperature <= 0:
        raise ValueError(f"hybrid evaluation samples each mode: temperature must be > 0, got {temperature}")
    examples = task.eval_examples()
    prompts = encode(tokenizer, examples)
    mine = dist.share(len(examples))
    n = h.eval_samples
    per_call = max(1, batch_size // (2 * n))  # problems per engine call
    samples: list[HybridSample] = []
    with tqdm(total=len(mine), desc="eval (hybrid)", unit="problem", dynamic_ncols=True,
              disable=None if progress else True) as bar:
        for start in range(0, len(mine), per_call):
            idx = list(mine[start:start + per_call])
            batch = [prompts[i] for i in idx]
            forced = engine.generate(batch, idx, 2 * n, max_new_tokens, temperature, modes.prefixes(len(idx), 2 * n))
            free = engine.generate(batch, idx, 1, max_new_tokens, 0.0)
            new = _graded(tokenizer, task, modes, examples, forced.rollouts, free.rollouts)
            samples += new
            bar.update(len(idx))
            if on_samples is not None:
                on_samples(new)
    samples = dist.gather(samples)
    return hybrid_metrics(samples, examples, h), samples


def _graded(tokenizer: Any, task: Task, modes: ModeTokens, examples: list[Example], forced: list, free: list
            ) -> list[HybridSample]:
    rollouts = forced + free
    kinds = [MODE_NAMES[modes.mode_of(r.completion)] for r in forced] + ["free"] * len(free)
    graded = task.grade([modes.answer_text(tokenizer, r.completion) for r in rollouts],
                        [examples[r.group] for r in rollouts])
    out = []
    for r, kind, g in zip(rollouts, kinds, graded):
        mode = modes.mode_of(r.completion)
        out.append(HybridSample(r.group, kind, None if mode is None else MODE_NAMES[mode], shown_text(tokenizer, r.completion),
                                g.answer, examples[r.group].reference, g.reward, g.correct, g.status, r.finish,
                                len(r.completion)))
    return out


def reference_mode(think: list[HybridSample], no_think: list[HybridSample], margin: float) -> int:
    """The better mode for one problem (arXiv 2505.14631, Eq. 13): the higher mean reward, or within
    ``margin`` the shorter mean length (not thinking on a length tie)."""
    gap = mean(s.reward for s in think) - mean(s.reward for s in no_think)
    if gap > margin:
        return THINK
    if gap < -margin:
        return NO_THINK
    return THINK if mean(s.length for s in think) < mean(s.length for s in no_think) else NO_THINK


def hybrid_metrics(samples: list[HybridSample], examples: list[Example], h: HybridConfig) -> dict[str, float]:
    """The metrics over all answered problems, then per value of ``h.group_by`` (a difficulty key)."""
    by_problem: dict[int, list[HybridSample]] = defaultdict(list)
    for s in samples:
        by_problem[s.problem].append(s)
    out = _summary(by_problem, h.eval_margin, "")
    if h.group_by:
        groups: dict[str, dict[int, list[HybridSample]]] = defaultdict(dict)
        for p, ss in by_problem.items():
            groups[str(difficulty(examples[p]).get(h.group_by))][p] = ss
        for value, members in sorted(groups.items()):
            out.update(_summary(members, h.eval_margin, f"by_{h.group_by}/{value}/"))
    return out


def _summary(by_problem: dict[int, list[HybridSample]], margin: float, prefix: str) -> dict[str, float]:
    free, agree, reference_think = [], 0, 0
    for ss in by_problem.values():
        choice = next(s for s in ss if s.kind == "free")
        reference = reference_mode([s for s in ss if s.kind == "think"], [s for s in ss if s.kind == "no_think"], margin)
        free.append(choice)
        agree += choice.mode == MODE_NAMES[reference]
        reference_think += reference == THINK
    p = len(by_problem)
    out = {f"eval/{prefix}n": float(p), f"eval/{prefix}accuracy": mean(s.correct for s in free),
           f"eval/{prefix}length": mean(s.length for s in free),
           f"hybrid/{prefix}hacc": agree / p, f"hybrid/{prefix}think_rate": sum(s.mode == "think" for s in free) / p,
           f"hybrid/{prefix}untagged_rate": sum(s.mode is None for s in free) / p,
           f"hybrid/{prefix}reference_think_rate": reference_think / p}
    for kind in ("think", "no_think"):
        forced = [s for ss in by_problem.values() for s in ss if s.kind == kind]
        out[f"hybrid/{prefix}{kind}_accuracy"] = mean(s.correct for s in forced)
        out[f"hybrid/{prefix}{kind}_length"] = mean(s.length for s in forced)
    return out
