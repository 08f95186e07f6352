"""Evaluation on a task's held-out set: greedy accuracy, pass@k, avg@n, maj@k, per-group breakdown.

Used by ``opo eval`` and, periodically, by ``opo train``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tqdm import tqdm

from opo.distributed import Dist
from opo.metrics import majority_vote, max_ngram_count, ngram_repetition, pass_at_k
from opo.rollout.base import Engine
from opo.tasks.base import Example, Task
from opo.tasks.chat import decode, encode


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
              repetition: tuple[int, int], done: Callable[[list[Sample]], None]) -> list[Sample]:
    rep_n, rep_min = repetition
    per_call = max(1, batch_size // n)  # problems per engine call
    out: list[Sample] = []
    for start in range(0, len(problems), per_call):
        idx = list(problems[start : start + per_call])
        batch = engine.generate([prompts[i] for i in idx], idx, n, max_new_tokens, temperature)
        texts = [decode(tokenizer, r.completion) for r in batch.rollouts]
        graded = task.grade(texts, [examples[r.group] for r in batch.rollouts])
        new = []
        for r, text, g in zip(batch.rollouts, texts, graded):
            ex = examples[r.group]
            new.append(Sample(r.group, mode, ex.messages[-1]["content"], text, g.answer, ex.reference, g.correct,
                              g.status, r.finish, len(r.completion), ngram_repetition(r.completion, rep_n),
                              max_ngram_count(r.completion, rep_n) >= rep_min))
        done(new)
        out += new
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
    on_samples: Optional[Callable[[list[Sample]], None]] = None,
    progress: bool = False,
) -> tuple[dict[str, float], list[Sample]]:
    """Metrics (flat ``eval/...`` keys) and every sample; ``n`` sampled completions per problem;
    ``repetition`` is (n, min_count) of the n-gram repetition measures. Under torch.distributed each
    process generates for its share of the problems and every process returns the whole result.
    ``on_samples`` receives each graded batch as it is done; ``progress`` shows a bar with an ETA
    (on a terminal)."""
    if n and temperature <= 0:
        raise ValueError(f"sampled evaluation (n={n}) needs temperature > 0, got {temperature}")
    for k in ks:
        if n and k > n:
            raise ValueError(f"pass@{k} needs n >= {k} samples per problem, got n={n}")
    examples = task.eval_examples()
    prompts = encode(tokenizer, examples)
    mine = dist.share(len(examples))
    samples: list[Sample] = []
    with tqdm(total=len(mine) * (int(greedy) + n), desc="eval", unit="completion", dynamic_ncols=True,
              disable=None if progress else True) as bar:
        def done(new: list[Sample]) -> None:
            bar.update(len(new))
            if on_samples is not None:
                on_samples(new)

        if greedy:
            samples += _generate(engine, tokenizer, task, examples, prompts, mine, 1, 0.0, max_new_tokens, batch_size,
                                 "greedy", repetition, done)
        if n:
            samples += _generate(engine, tokenizer, task, examples, prompts, mine, n, temperature, max_new_tokens,
                                 batch_size, "sampled", repetition, done)
    samples = dist.gather(samples)
    return metrics_of(samples, examples, ks if n else ()), samples


def metrics_of(samples: list[Sample], examples: list[Example], ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of the problems ``samples`` answer, overall and per metadata value (subject, level)."""
    problems = sorted({s.problem for s in samples})
    metrics = summarise(samples, [examples[i] for i in problems], ks)
    for key in sorted({k for i in problems for k, v in examples[i].metadata.items() if isinstance(v, (str, int))}):
        groups: dict[str, list[int]] = defaultdict(list)
        for i in problems:
            if key in examples[i].metadata:
                groups[str(examples[i].metadata[key])].append(i)
        for value, members in sorted(groups.items()):
            keep = set(members)
            sub = summarise([s for s in samples if s.problem in keep], [examples[i] for i in members], ks)
            for name in ("accuracy", "pass@1", "n"):
                if f"eval/{name}" in sub:
                    metrics[f"eval/by_{key}/{value}/{name}"] = sub[f"eval/{name}"]
    return metrics


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
