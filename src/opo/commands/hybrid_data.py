"""``opo hybrid-data``: the data stage of hybrid thinking (Hybrid Fine-Tuning, arXiv 2505.14631, Sec. 3.1).

For each of the first ``problems`` training problems it samples ``samples`` completions with a
step-by-step prompt and as many with a direct prompt, grades them with the task, and keeps correct,
complete ones (rejection sampling). Each kept sample becomes a chat row in the format of
:mod:`opo.hybrid` (``<think> reasoning </think> answer`` or ``<no_think> answer </no_think>``), asked
with the task's *own* prompt: the prompt HGPO samples with later, where the model must choose the mode.

Every graded sample goes to samples.jsonl as its batch is done; hybrid.jsonl (atomically) and
summary.json are written at the end, and after Ctrl-C from the problems finished so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm import tqdm

from opo import checkpoint, rundir
from opo.config import HybridConfig, HybridDataConfig, TaskConfig
from opo.errors import ConfigError
from opo.hybrid import MODE_NAMES, NO_THINK, THINK, difficulty, direct_response, thinking_response
from opo.rewards.extract import EXTRACTORS
from opo.run import Run, output_dir, setup
from opo.tasks import Example, Graded, Task, decode, encode
from opo.tasks.base import prompt_messages
from opo.tasks.math import PRESETS

MODES = (MODE_NAMES[THINK], MODE_NAMES[NO_THINK])  # "think", "no_think": the order of rows and reports
OUTPUTS = ("hybrid.jsonl", "samples.jsonl", "summary.json")  # what a run writes into run.dir
Extractor = Callable[[str], Optional[str]]


@dataclass
class Candidate:
    """One graded sample in one mode."""

    problem: int  # index in the training stream
    mode: str  # "think" | "no_think"
    text: str  # the completion as decoded
    answer: Optional[str]  # the final answer the grader took
    correct: bool
    status: str  # the grader's: ok | no_answer | timeout | error
    finish: str  # stop | length
    length: int  # completion tokens

    @property
    def accepted(self) -> bool:
        """Correct and complete: a response cut off at the length limit is no training target."""
        return self.correct and self.finish == "stop"


# --- pure pieces: which samples become rows, and what a row is ---

def choose_rows(candidates: list[Candidate], per_mode: int, balance: bool) -> list[Candidate]:
    """The samples that become rows: for each problem and mode, the first ``per_mode`` accepted samples
    with distinct texts; with ``balance`` each mode is cut to the other's count, keeping its earliest
    problems, so fine-tuning does not tilt the model towards one mode before HGPO learns when to think.
    Ordered by problem, thinking first, samples in their drawn order."""
    kept: dict[tuple[int, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        chosen = kept[(c.problem, c.mode)]
        if c.accepted and len(chosen) < per_mode and all(c.text.strip() != k.text.strip() for k in chosen):
            chosen.append(c)
    rows = sorted((c for cs in kept.values() for c in cs), key=lambda c: (c.problem, MODES.index(c.mode)))
    if not balance:
        return rows
    cap = min(sum(c.mode == m for c in rows) for m in MODES)
    seen: Counter[str] = Counter()
    out = []
    for c in rows:
        seen[c.mode] += 1
        if seen[c.mode] <= cap:
            out.append(c)
    return out


def make_row(example: Example, c: Candidate, h: HybridConfig, boxed: bool = False) -> dict[str, Any]:
    """One chat row: the task's own messages (system prompt first, if the task sets one), then the
    sample in its mode's format; thinking keeps its whole reasoning and repeats the answer after it,
    as ``\\boxed{answer}`` with ``boxed`` (math tasks, whose graders read a bare ``1/2`` or ``(3, 5)`` wrongly)."""
    if c.mode == MODE_NAMES[THINK]:
        answer = c.answer or ""
        response = thinking_response(h, c.text, f"\\boxed{{{answer}}}" if boxed else answer)
    else:
        response = direct_response(h, c.text)
    return {"messages": [*example.messages, {"role": "assistant", "content": response}], "mode": c.mode,
            "metadata": difficulty(example)}


def question_of(example: Example, t: TaskConfig) -> str:
    """The bare question, which the thinking and direct prompts wrap their own way."""
    entry = example.metadata.get("entry")
    if isinstance(entry, dict):  # reasoning_gym keeps its item
        return str(entry["question"])
    preset = PRESETS.get(t.name)  # math tasks keep their row's fields
    return str(example.metadata["row"][t.question_field or (preset.question_field if preset else "question")])


def grade_thinking(task: Task, texts: list[str], examples: list[Example], extract: Optional[Extractor]) -> list[Graded]:
    """Verdicts on step-by-step completions: ``extract`` takes the final answer out of the reasoning and
    the task grades that answer alone (its own extractor would find the first number of the reasoning);
    None lets the task grade the whole text (math tasks: \\boxed{} and their other forms)."""
    if extract is None:
        return task.grade(texts, examples)
    answers = [extract(t) for t in texts]
    found = [i for i, a in enumerate(answers) if a is not None]
    verdicts = task.grade([answers[i] for i in found], [examples[i] for i in found]) if found else []
    graded = dict(zip(found, verdicts))
    return [graded.get(i, Graded(None, 0.0, False, "no_answer")) for i in range(len(texts))]


def think_extractor(cfg: HybridDataConfig) -> Optional[Extractor]:
    """The configured extractor; by default last_number on reasoning_gym, the task's own on math tasks."""
    if cfg.think_extractor is None and cfg.task.name != "reasoning_gym":
        return None
    return EXTRACTORS.get(cfg.think_extractor or "last_number")


# --- sampling ---

def _prompts(cfg: HybridDataConfig, examples: list[Example], mode: str) -> list[Example]:
    """The examples as each mode asks them: the think prompt; the direct prompt, or the task's own."""
    template = cfg.think_prompt if mode == MODE_NAMES[THINK] else cfg.direct_prompt
    if template is None:
        return examples
    return [Example(prompt_messages(cfg.task.system_prompt, template, question_of(ex, cfg.task)), ex.reference,
                    ex.metadata) for ex in examples]


def sample_mode(run: Run, cfg: HybridDataConfig, problems: list[int], examples: list[Example],
                mode: str) -> list[Candidate]:
    """``cfg.samples`` graded completions of each of ``problems`` in ``mode``, in one generation call."""
    thinking = mode == MODE_NAMES[THINK]
    asked = _prompts(cfg, examples, mode)
    batch = run.engine.generate(encode(run.tok, asked), list(range(len(problems))), cfg.samples,
                                cfg.think_max_new_tokens if thinking else cfg.direct_max_new_tokens, cfg.temperature)
    rollouts = batch.rollouts
    texts = [decode(run.tok, r.completion) for r in rollouts]
    owners = [examples[r.group] for r in rollouts]
    if thinking:
        graded = grade_thinking(run.task, texts, owners, think_extractor(cfg))
    else:
        graded = run.task.grade(texts, owners)
    return [Candidate(problems[r.group], mode, text, g.answer, g.correct, g.status, r.finish, len(r.completion))
            for r, text, g in zip(rollouts, texts, graded)]


def sample_all(run: Run, cfg: HybridDataConfig, examples: list[Example],
               done: Callable[[list[Candidate]], None]) -> None:
    """Both modes for every problem, ``cfg.batch_size`` sequences per call; ``done`` gets each
    batch of problems' samples (both modes) once they are graded."""
    per_call = max(1, cfg.batch_size // cfg.samples)  # problems per generation call
    with tqdm(total=len(examples), desc="hybrid-data", unit="problem", dynamic_ncols=True,
              disable=None if cfg.run.progress else True) as bar:
        for start in range(0, len(examples), per_call):
            problems = list(range(start, min(start + per_call, len(examples))))
            batch = [examples[i] for i in problems]
            done([c for mode in MODES for c in sample_mode(run, cfg, problems, batch, mode)])
            bar.update(len(problems))


# --- the command ---

def run_hybrid_data(cfg: HybridDataConfig) -> dict[str, Any]:
    """Write the hybrid SFT set of ``cfg``; returns the summary's metrics. Interrupted
    (KeyboardInterrupt), it writes the rows and summary of the problems done, then re-raises."""
    started = time.time()
    out_dir = output_dir(cfg.run.dir)
    out = Path(cfg.out) if cfg.out else out_dir / "hybrid.jsonl"
    rundir.check_writable(out_dir)  # before minutes of loading and sampling, not after
    rundir.check_writable(out.parent, "out")
    with rundir.RunDirLock(out_dir):
        _claim(out_dir, out, cfg.overwrite)
        run = setup(cfg, max_new_tokens=max(cfg.think_max_new_tokens, cfg.direct_max_new_tokens))
        done: list[Candidate] = []
        try:
            examples = [run.task.train_example(i) for i in range(cfg.problems)]
            with open(out_dir / "samples.jsonl", "w") as log:
                def keep(new: list[Candidate]) -> None:
                    done.extend(new)
                    log.writelines(json.dumps(asdict(c)) + "\n" for c in new)
                    log.flush()

                sample_all(run, cfg, examples, keep)
        except BaseException:  # Ctrl-C or a failure: the finished problems' rows are kept, then it propagates
            if done:
                with contextlib.suppress(Exception):  # a second failure (a full disk) must not hide the first
                    _finish(cfg, examples, done, out_dir, out, started, interrupted=True)
            raise
        finally:
            run.close()
        return _finish(cfg, examples, done, out_dir, out, started)


def _claim(out_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse to mix this run's files with earlier ones (call with run.dir locked); with ``overwrite``,
    delete the files an earlier hybrid-data run wrote there first."""
    found = sorted(p.name for p in out_dir.iterdir() if p.name != rundir.LOCK)
    if out.exists() and out.parent.resolve() != out_dir.resolve():
        found.append(str(out))
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"run.dir {out_dir} is not empty ({', '.join(found[:5])}); choose a new run.dir, or "
                          "overwrite=true to replace an earlier hybrid-data run's files")
    for path in [out_dir / name for name in OUTPUTS] + [out]:
        path.unlink(missing_ok=True)


def _finish(cfg: HybridDataConfig, examples: list[Example], samples: list[Candidate], out_dir: Path, out: Path,
            started: float, interrupted: bool = False) -> dict[str, Any]:
    rows = choose_rows(samples, cfg.per_mode, cfg.balance)
    boxed = cfg.task.name != "reasoning_gym"  # the math tasks' graders read \boxed{} first
    _write_atomic(out, [json.dumps(make_row(examples[c.problem], c, cfg.hybrid, boxed)) + "\n" for c in rows])
    metrics = summarise(samples, rows, examples)
    metrics["time/wall_s"] = time.time() - started
    summary = {"config": cfg.to_dict(), "out": str(out), "metrics": metrics,
               **({"interrupted": True} if interrupted else {})}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_report(metrics, cfg))
    if interrupted:
        print(f"interrupted: the rows and rates cover the {int(metrics['problems'])} problems done")
    print(f"wrote {out} ({len(rows)} rows), {out_dir / 'summary.json'} and {out_dir / 'samples.jsonl'}")
    h = cfg.hybrid
    tags = f"sft.add_tokens=[{h.think_tag},{h.think_end},{h.no_think_tag},{h.no_think_end}]"
    print(f"next: opo sft data.path={shlex.quote(str(out))} {shlex.quote(tags)}")
    return metrics


def _write_atomic(path: Path, lines: list[str]) -> None:
    """Write ``lines`` through a temporary file renamed over ``path``: a kill leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    checkpoint.fsync_dir(path.parent)


def summarise(samples: list[Candidate], rows: list[Candidate], examples: list[Example]) -> dict[str, Any]:
    """Flat metrics per mode: acceptance (accepted / sampled), problems with an accepted sample, cut-off
    samples, rows written and their mean completion tokens; acceptance again per difficulty value."""
    problems = sorted({c.problem for c in samples})
    metrics: dict[str, Any] = {"problems": float(len(problems))}
    for mode in MODES:
        mine = [c for c in samples if c.mode == mode]
        written = [c for c in rows if c.mode == mode]
        metrics[f"{mode}/acceptance"] = _mean([c.accepted for c in mine])
        metrics[f"{mode}/problems_solved"] = _mean([any(c.accepted for c in mine if c.problem == i) for i in problems])
        metrics[f"{mode}/truncated"] = _mean([c.finish == "length" for c in mine])
        metrics[f"{mode}/rows"] = float(len(written))
        metrics[f"{mode}/row_tokens"] = _mean([c.length for c in written])
    by_value: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i in problems:
        for key, value in difficulty(examples[i]).items():
            by_value[(key, str(value))].add(i)
    for (key, value), members in sorted(by_value.items()):
        metrics[f"by_{key}/{value}/problems"] = float(len(members))
        for mode in MODES:
            metrics[f"by_{key}/{value}/{mode}/acceptance"] = _mean(
                [c.accepted for c in samples if c.mode == mode and c.problem in members])
    return metrics


def _mean(values: list[Any]) -> float:
    return sum(values) / len(values) if values else 0.0


def format_report(metrics: dict[str, Any], cfg: HybridDataConfig) -> str:
    """Acceptance, rows and lengths per mode, then acceptance per difficulty value."""
    head = (f"opo hybrid-data | {cfg.task.name} | model {cfg.model.path} | {int(metrics['problems'])} problems x "
            f"{cfg.samples} samples per mode | temperature {cfg.temperature}")
    lines = [head, "-" * len(head),
             f"{'mode':<10} {'accepted':>9} {'solved':>8} {'cut off':>8} {'rows':>6} {'tokens':>7}"]
    for mode in MODES:
        lines.append(f"{mode:<10} {metrics[f'{mode}/acceptance']:>9.1%} {metrics[f'{mode}/problems_solved']:>8.1%} "
                     f"{metrics[f'{mode}/truncated']:>8.1%} {int(metrics[f'{mode}/rows']):>6} "
                     f"{metrics[f'{mode}/row_tokens']:>7.1f}")
    groups = sorted({k.rsplit("/", 1)[0] for k in metrics if k.startswith("by_") and k.endswith("/problems")})
    if groups:
        lines += ["", f"{'group':<24} {'n':>4} " + " ".join(f"{m:>9}" for m in MODES)]
        for g in groups:
            lines.append(f"{g.removeprefix('by_'):<24} {int(metrics[f'{g}/problems']):>4} "
                         + " ".join(f"{metrics[f'{g}/{m}/acceptance']:>9.1%}" for m in MODES))
    lines.append(f"{'time':<10} {metrics['time/wall_s']:>8.0f}s")
    return "\n".join(lines)
