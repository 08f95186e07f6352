"""opo hybrid-data: rows, rejection sampling, config, and one run through the CLI on the tiny model."""

import json
import subprocess
import sys

import pytest

from opo.hybrid import difficulty
from opo.commands.hybrid_data import (Candidate, _claim, choose_rows, grade_thinking, make_row,
                                      question_of, summarise)
from opo.config import ConfigError, HybridConfig, TaskConfig, load_hybrid_data_config
from opo.rewards.extract import EXTRACTORS
from opo.tasks import Example, Graded, build_task

H = HybridConfig()


def chain_sum(system_prompt=None, **args):
    t = TaskConfig(system_prompt=system_prompt, eval_size=5, generator_args=args or TaskConfig().generator_args)
    return t, build_task(t)


def cand(problem, mode, text="1", correct=True, finish="stop", answer="1", length=3):
    return Candidate(problem, mode, text, answer, correct, "ok", finish, length)


# --- rows ---

def test_a_thinking_row_asks_with_the_tasks_own_prompt_and_carries_the_difficulty():
    t, task = chain_sum(system_prompt="You add numbers.", min_terms=2, max_terms=4, min_digits=1, max_digits=2)
    ex = task.train_example(0)
    row = make_row(ex, cand(0, "think", text=" 15 - 43 = -28, -28 - 75 = -103\nAnswer: -103 ", answer="-103"), H)
    system, user, assistant = row["messages"]
    assert system == {"role": "system", "content": "You add numbers."}
    assert user["role"] == "user" and user["content"] == ex.messages[-1]["content"]
    assert user["content"].endswith("Answer with just the number.")  # not the think prompt
    assert assistant == {"role": "assistant",
                         "content": "<think>\n15 - 43 = -28, -28 - 75 = -103\nAnswer: -103\n</think>\n\n-103"}
    assert row["mode"] == "think"
    entry = ex.metadata["entry"]["metadata"]
    assert row["metadata"] == {"num_terms": entry["num_terms"], "num_digits": entry["num_digits"]}
    json.dumps(row)  # a JSONL row


def test_a_direct_row_holds_the_stripped_completion_inside_the_no_think_tags():
    _, task = chain_sum()
    row = make_row(task.train_example(1), cand(1, "no_think", text=" 7\n"), H)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]  # no system prompt set: none
    assert row["messages"][1]["content"] == "<no_think>7</no_think>" and row["mode"] == "no_think"


def test_the_rows_use_the_configured_tag_texts():
    h = HybridConfig(think_tag="<t>", think_end="</t>", no_think_tag="<n>", no_think_end="</n>")
    _, task = chain_sum()
    ex = task.train_example(0)
    assert make_row(ex, cand(0, "think", text="a", answer="5"), h)["messages"][-1]["content"] == "<t>\na\n</t>\n\n5"
    assert make_row(ex, cand(0, "no_think", text="5"), h)["messages"][-1]["content"] == "<n>5</n>"
    # math tasks: the answer after the thinking is boxed, so the task's grader reads 1/2 as 1/2, not 2
    assert make_row(ex, cand(0, "think", text="a", answer="\\frac{1}{2}"), h, boxed=True)["messages"][-1]["content"] \
        == "<t>\na\n</t>\n\n\\boxed{\\frac{1}{2}}"


def test_difficulty_of_a_math_row_is_its_scalar_metadata():
    ex = Example([{"role": "user", "content": "q"}], "1", {"subject": "Algebra", "level": 3, "row": {"problem": "q"}})
    assert difficulty(ex) == {"subject": "Algebra", "level": 3}


def test_question_of_finds_the_bare_question_of_generated_and_file_tasks():
    t, task = chain_sum()
    ex = task.train_example(0)
    assert question_of(ex, t) == ex.metadata["entry"]["question"]
    row = Example([{"role": "user", "content": "x"}], "1", {"row": {"problem": "What is 1+1?", "q": "other"}})
    assert question_of(row, TaskConfig(name="math500")) == "What is 1+1?"
    assert question_of(row, TaskConfig(name="jsonl", data_path="f", question_field="q")) == "other"


# --- rejection sampling ---

def test_choose_rows_keeps_per_mode_distinct_correct_complete_samples_per_problem():
    samples = [
        cand(0, "think", "a", correct=False), cand(0, "think", "b"), cand(0, "think", " b "), cand(0, "think", "c"),
        cand(0, "no_think", "5", finish="length"), cand(0, "no_think", "5"),
        cand(1, "no_think", "6"), cand(1, "think", "d", correct=False),
        cand(2, "think", "e"), cand(2, "no_think", "7"),
    ]
    rows = choose_rows(samples, per_mode=2, balance=False)
    # problem 0: b and c (b's copy is not a new row), the complete 5; problem 1: no correct thinking
    assert [(c.problem, c.mode, c.text) for c in rows] == [
        (0, "think", "b"), (0, "think", "c"), (0, "no_think", "5"), (1, "no_think", "6"), (2, "think", "e"),
        (2, "no_think", "7")]
    assert [(c.problem, c.text) for c in choose_rows(samples, 1, False) if c.mode == "think"] == [(0, "b"), (2, "e")]


def test_balance_cuts_the_larger_mode_keeping_its_earliest_problems():
    samples = [cand(0, "no_think", "1"), cand(1, "no_think", "2"), cand(1, "think", "x"), cand(2, "no_think", "3")]
    rows = choose_rows(samples, 1, balance=True)
    assert [(c.problem, c.mode) for c in rows] == [(0, "no_think"), (1, "think")]
    assert choose_rows([cand(0, "think")], 1, balance=True) == []  # nothing to balance against


def test_summarise_counts_acceptance_per_mode_and_difficulty_value():
    exs = [Example([], "1", {"level": 1}), Example([], "1", {"level": 2})]
    samples = [cand(0, "think"), cand(0, "think", correct=False), cand(1, "think", finish="length"),
               cand(1, "think", correct=False), cand(0, "no_think", length=2), cand(0, "no_think", "2"),
               cand(1, "no_think"), cand(1, "no_think", correct=False)]
    rows = choose_rows(samples, 1, balance=False)
    m = summarise(samples, rows, exs)
    assert m["problems"] == 2
    assert m["think/acceptance"] == 0.25 and m["think/problems_solved"] == 0.5 and m["think/truncated"] == 0.25
    assert m["no_think/acceptance"] == 0.75 and m["no_think/problems_solved"] == 1.0
    assert m["think/rows"] == 1 and m["no_think/rows"] == 2 and m["no_think/row_tokens"] == 2.5
    assert m["by_level/1/think/acceptance"] == 0.5 and m["by_level/2/think/acceptance"] == 0.0
    assert m["by_level/1/no_think/acceptance"] == 1.0 and m["by_level/2/problems"] == 1


def test_thinking_is_graded_on_the_extracted_final_answer():
    _, task = chain_sum()
    ex = task.train_example(0)
    right, wrong = ex.reference, str(int(ex.reference) + 1)
    texts = [f"{wrong} is too much, so the sum is\nAnswer: {right}", f"Answer: {wrong}", "no number here"]
    graded = grade_thinking(task, texts, [ex] * 3, EXTRACTORS.get("last_number"))
    assert [g.correct for g in graded] == [True, False, False]
    assert graded[0].answer == right and graded[2] == Graded(None, 0.0, False, "no_answer")
    assert not task.grade(texts[:1], [ex])[0].correct  # the task's first_number would take the first step


# --- config and run directory ---

@pytest.mark.parametrize("override, message", [
    ("per_mode=3", "per_mode (3) must be <= samples (2)"),
    ("think_prompt=Think hard.", "think_prompt must contain '{question}'"),
    ("direct_prompt=Just answer.", "direct_prompt must contain '{question}'"),
    ("think_extractor=boxed", "think_extractor='boxed' is not allowed"),
    ("hybrid.enabled=true", "hybrid.enabled=true has no meaning"),
    ("temperature=0", "temperature must be > 0"),
    ("problems=0", "problems must be >= 1"),
    ("samples=two", "samples must be int"),
    ("nope=1", "unknown config key 'nope'"),
    ("hybrid.think_tag=<no_think>", "the four tags must be distinct"),
])
def test_bad_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hybrid_data_config(None, ["samples=2", override])


def test_defaults_validate_and_shortcuts_apply():
    cfg = load_hybrid_data_config(None, ["task=gsm8k", "seed=3", "run_dir=out/x"])
    assert (cfg.task.name, cfg.run.seed, cfg.run.dir) == ("gsm8k", 3, "out/x")
    assert "{question}" in cfg.think_prompt and cfg.run.dir != "runs/{time}"


def test_a_non_empty_run_dir_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "hybrid.jsonl"
    _claim(tmp_path, out, overwrite=False)  # empty: fine
    (tmp_path / ".lock").write_text("")
    _claim(tmp_path, out, overwrite=False)  # the lock is no run
    out.write_text("{}\n")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="not empty \\(hybrid.jsonl, summary.json\\).*overwrite=true"):
        _claim(tmp_path, out, overwrite=False)
    _claim(tmp_path, out, overwrite=True)
    assert not out.exists() and not (tmp_path / "summary.json").exists()


# --- through the CLI ---

def opo(*args):
    return subprocess.run([sys.executable, "-m", "opo", "hybrid-data", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.e2e
def test_bad_setting_exits_2_through_the_cli(tmp_path):
    proc = opo("per_mode=9", f"run.dir={tmp_path}")
    assert proc.returncode == 2 and "config error: per_mode (9) must be <= samples" in proc.stderr


@pytest.mark.e2e
def test_a_tiny_run_writes_rows_and_summary_and_a_rerun_needs_overwrite(tmp_path):
    run = tmp_path / "run"
    args = ["model.path=tiny", "problems=2", "samples=2", "think_max_new_tokens=6", "direct_max_new_tokens=4",
            "run.progress=false", "run.threads=1", f"run.dir={run}"]
    proc = opo(*args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "hybrid.jsonl").read_text().splitlines()]
    assert all(r["mode"] in ("think", "no_think") and r["messages"][-1]["role"] == "assistant" for r in rows)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2  # problems x samples x modes
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["problems"] == 2 and "think/acceptance" in metrics
    assert "by_num_terms/2/no_think/acceptance" in metrics
    assert "next: opo sft data.path=" in proc.stdout
    assert "'sft.add_tokens=[<think>,</think>,<no_think>,</no_think>]'" in proc.stdout  # quoted for the shell
    again = opo(*args)
    assert again.returncode == 2 and "is not empty" in again.stderr
    assert opo(*args, "overwrite=true").returncode == 0
