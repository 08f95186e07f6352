"""Evaluation on a task's held-out set: greedy accuracy, pass@k, avg@n, maj@k, per-group breakdown.

Used by ``opo eval`` and, periodically, by ``opo train``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Optional

from opo.distributed import Dist
from opo.metrics import majority_vote, max_ngram_count, ngram_repetition, pass_at_k
from opo.rollout.base import Engine
from opo.tasks.base import Example, Task


def encode(tokenizer: Any, examples: list[Example]) -> list[list[int]]:
    """Chat-template token ids of each example's prompt, ready for generation."""
    out = []
    for ex in examples:
        ids = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def decode(tokenizer: Any, completion: list[int]) -> str:
    return tokenizer.decode(completion, skip_special_tokens=True)


@dataclass
class Sample:
    problem: int
    mode: str  # "greedy" | "sampled"
    prompt: str
    completion: str
    answer: Optional[str]
    reference: str
    correct: bool
    status: str
    finish: str
    length: int
    repetition: float  # repeated n-gram fraction of the completion's tokens
    degenerate: bool  # some n-gram occurs at least min_count times


def _generate(engine: Engine, tokenizer: Any, task: Task, examples: list[Example], prompts: list[list[int]],
              problems: range, n: int, temperature: float, max_new_tokens: int, batch_size: int, mode: str,
              repetition: tuple[int, int]) -> list[Sample]:
    rep_n, rep_min = repetition
    per_call = max(1, batch_size // n)  # problems per engine call
    out: list[Sample] = []
    for start in range(0, len(problems), per_call):
        idx = list(problems[start : start + per_call])
        batch = engine.generate([prompts[i] for i in idx], idx, n, max_new_tokens, temperature)
        texts = [decode(tokenizer, r.completion) for r in batch.rollouts]
        graded = task.grade(texts, [examples[r.group] for r in batch.rollouts])
        for r, text, g in zip(batch.rollouts, texts, graded):
            ex = examples[r.group]
            out.append(Sample(r.group, mode, ex.messages[-1]["content"], text, g.answer, ex.reference, g.correct,
                              g.status, r.finish, len(r.completion), ngram_repetition(r.completion, rep_n),
                              max_ngram_count(r.completion, rep_n) >= rep_min))
    return out


def evaluate(
    engine: Engine,
    tokenizer: Any,
    task: Task,
    *,
    n: int = 0,
    ks: tuple[int, ...] = (1,),
    temperature: float = 1.0,
    max_new_tokens: int = 512,
    greedy: bool = True,
    batch_size: int = 64,
    repetition: tuple[int, int] = (4, 3),
    dist: Dist = Dist(),
) -> tuple[dict[str, float], list[Sample]]:
    """Metrics (flat ``eval/...`` keys) and every sample; ``n`` sampled completions per problem;
    ``repetition`` is (n, min_count) of the n-gram repetition measures. Under torch.distributed each
    process generates for its share of the problems and every process returns the whole result."""
    if n and temperature <= 0:
        raise ValueError(f"sampled evaluation (n={n}) needs temperature > 0, got {temperature}")
    for k in ks:
        if n and k > n:
            raise ValueError(f"pass@{k} needs n >= {k} samples per problem, got n={n}")
    examples = task.eval_examples()
    prompts = encode(tokenizer, examples)
    mine = dist.share(len(examples))
    samples: list[Sample] = []
    if greedy:
        samples += _generate(engine, tokenizer, task, examples, prompts, mine, 1, 0.0, max_new_tokens, batch_size,
                             "greedy", repetition)
    if n:
        samples += _generate(engine, tokenizer, task, examples, prompts, mine, n, temperature, max_new_tokens,
                             batch_size, "sampled", repetition)
    samples = dist.gather(samples)
    metrics = summarise(samples, examples, ks if n else ())
    for key in sorted({k for ex in examples for k in ex.metadata if isinstance(ex.metadata[k], (str, int))}):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            if key in ex.metadata:
                groups[str(ex.metadata[key])].append(i)
        for value, members in sorted(groups.items()):
            keep = set(members)
            sub = summarise([s for s in samples if s.problem in keep], [examples[i] for i in members], ks if n else ())
            for name in ("accuracy", "pass@1", "n"):
                if f"eval/{name}" in sub:
                    metrics[f"eval/by_{key}/{value}/{name}"] = sub[f"eval/{name}"]
    return metrics, samples


def summarise(samples: list[Sample], examples: list[Example], ks: tuple[int, ...]) -> dict[str, float]:
    """Aggregate metrics of ``samples`` over the problems they belong to."""
    out: dict[str, float] = {"eval/n": float(len(examples))}
    greedy = [s for s in samples if s.mode == "greedy"]
    if greedy:
        out["eval/accuracy"] = sum(s.correct for s in greedy) / len(greedy)
    sampled: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.mode == "sampled":
            sampled[s.problem].append(s)
    if sampled:
        n = min(len(v) for v in sampled.values())
        out["eval/avg@n"] = sum(s.correct for v in sampled.values() for s in v) / sum(len(v) for v in sampled.values())
        for k in ks:
            out[f"eval/pass@{k}"] = sum(pass_at_k(len(v), sum(s.correct for s in v), k) for v in sampled.values()) / len(sampled)
            out[f"eval/maj@{k}"] = sum(majority_vote([s.answer for s in v[:k]], [s.correct for s in v[:k]])
                                       for v in sampled.values()) / len(sampled)
        out["eval/samples_per_problem"] = float(n)
    if samples:
        out["eval/length"] = sum(s.length for s in samples) / len(samples)
        out["eval/truncated"] = sum(s.finish == "length" for s in samples) / len(samples)
        out["eval/repetition"] = sum(s.repetition for s in samples) / len(samples)
        out["eval/degenerate"] = sum(s.degenerate for s in samples) / len(samples)
        out["eval/no_answer"] = sum(s.status == "no_answer" for s in samples) / len(samples)
        out["eval/grader_timeouts"] = float(sum(s.status == "timeout" for s in samples))
        out["eval/grader_errors"] = float(sum(s.status == "error" for s in samples))
    return out


def sample_rows(samples: list[Sample]) -> list[dict[str, Any]]:
    return [asdict(s) for s in samples]
