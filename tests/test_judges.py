"""Judges: verdict parsing, position handling, tournaments with synthetic judges, judge rewards,
best-of-n picks, the preference task and preference pairs."""

import json
import math
import random
from collections import Counter

import pytest

from opo.commands.pairs import make_pairs
from opo.config import ConfigError, load_config, load_eval_config
from opo.evaluate import Sample
from opo.judges import (Judgment, PairJudge, judge_messages, knockout, knockout_plan, pairwise, parse_verdict, play,
                        reward_plan, round_robin)
from opo.judges.reward import JudgeRewards, combine
from opo.judges.select import best_of_n
from opo.judges.verdict import check_template
from opo.tasks import PreferenceTask, ReasoningGymTask


class RuleJudge:
    """A synthetic judge over texts: prefers the response ``better(a, b)`` says, wrong with
    probability ``noise``, or always picks a fixed position (``bias``)."""

    name = "rule"

    def __init__(self, better=lambda a, b: len(a) > len(b), noise=0.0, bias=None, seed=0):
        self.better, self.noise, self.bias = better, noise, bias
        self.rng = random.Random(seed)
        self.seen = []

    def judge(self, items):
        self.seen.append(len(items))
        out = []
        for q, a, b in items:
            if self.bias is not None:
                out.append(Judgment(self.bias, f"\\boxed{{Assistant {self.bias}}}", "ok"))
                continue
            first = self.better(a, b)
            if self.rng.random() < self.noise:
                first = not first
            out.append(Judgment(1 if first else 2, "", "ok"))
        return out


# --- verdicts ---

@pytest.mark.parametrize("text, expected", [
    ("Both are fine, but\n\\boxed{Assistant 2}", (2, "ok")),
    ("\\boxed{Assistant 1} ... on reflection \\boxed{Assistant 2}", (2, "ok")),  # the last box counts
    ("\\boxed{\\text{Assistant 1}}", (1, "ok")),
    ("\\boxed{ assistant  1. }", (1, "ok")),
    ("\\boxed{2}", (2, "ok")),
    ("\\boxed{Response 1}", (1, "ok")),
    ("I think \\boxed{Assistant 1</think> no box after the reasoning", (None, "no_verdict")),
    ("<think>\\boxed{Assistant 1}</think>Assistant 2 is better", (None, "no_verdict")),  # only after </think>
    ("<think>hmm</think>\\boxed{Assistant 1}", (1, "ok")),
    ("\\boxed{Assistant 1", (None, "no_verdict")),  # never closed (cut off)
    ("\\boxed{Assistant 3}", (None, "bad_verdict")),
    ("\\boxed{Assistant 1 or Assistant 2}", (None, "bad_verdict")),
    ("\\boxed{}", (None, "bad_verdict")),
    ("\\boxed{{Assistant 1}}", (None, "bad_verdict")),
    ("Assistant 1 is better.", (None, "no_verdict")),
    ("", (None, "no_verdict")),
])
def test_parse_verdict_reads_the_last_box_after_the_reasoning(text, expected):
    assert parse_verdict(text) == expected


def test_judge_prompt_fills_each_field_once_and_shows_both_assistants():
    m = judge_messages("Q {response_1}?", "first {query}", "second", system_prompt="S")
    assert m[0] == {"role": "system", "content": "S"}
    text = m[1]["content"]
    assert "Q {response_1}?" in text and "first {query}" in text  # inserted text is not substituted again
    assert text.index("[Assistant 1]") < text.index("first") < text.index("[Assistant 2]") < text.index("second")
    assert "\\boxed{Assistant 1}" in text and "\\boxed{Assistant 2}" in text
    assert check_template("{query} {response_1}") == "the judge template lacks {response_2}"


# --- position ---

def test_both_orders_count_disagreement_of_a_position_biased_judge():
    biased = PairJudge(RuleJudge(bias=1), order="both")
    verdicts = biased.compare([("q", "a", "bb"), ("q", "ccc", "d")])
    assert [v.score for v in verdicts] == [0.5, 0.5] and all(v.disagree for v in verdicts)
    assert biased.metrics()["judge/order_disagreement"] == 1.0 and biased.metrics()["judge/calls"] == 4
    fair = PairJudge(RuleJudge(), order="both")
    assert [v.score for v in fair.compare([("q", "a", "bb"), ("q", "ccc", "d")])] == [0.0, 1.0]
    assert fair.metrics()["judge/order_disagreement"] == 0.0


def test_random_order_spreads_a_position_bias_over_both_responses():
    j = PairJudge(RuleJudge(bias=2), order="random", seed=3)
    scores = [v.score for v in j.compare([("q", "a", "b")] * 400)]
    assert 0.4 < sum(scores) / len(scores) < 0.6
    assert [v.score for v in PairJudge(RuleJudge(bias=2), order="fixed").compare([("q", "a", "b")])] == [0.0]


def test_a_failed_judgment_is_a_tie_and_counted():
    class Failing:
        name = "failing"

        def judge(self, items):
            return [Judgment(None, "", "timeout"), Judgment(None, "rambling", "no_verdict")][: len(items)]

    j = PairJudge(Failing(), order="fixed")
    assert [v.score for v in j.compare([("q", "a", "b"), ("q", "c", "d")])] == [0.5, 0.5]
    assert j.metrics() == {"judge/calls": 2.0, "judge/no_verdict": 1.0, "judge/failures": 1.0}


# --- tournaments ---

def strength(i, j):  # noiseless: the higher index is better
    return float(i > j)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 8, 9, 13, 16, 17])
def test_noiseless_knockout_finds_the_best_with_exactly_n_minus_1_calls(n):
    for seed in range(5):
        s = knockout(n, pairwise(strength), rng=random.Random(seed))
        assert s.best == n - 1 and s.calls == n - 1 and sorted(s.ranking) == list(range(n))
        assert max(s.scores) == math.ceil(math.log2(n)) if n > 1 else s.scores == [0.0]
    assert knockout(n, pairwise(strength), votes=3).calls == 3 * (n - 1)


def test_knockout_seeding_pairs_best_with_worst_and_gives_the_top_seed_the_bye():
    asked = []

    def compare(pairs):
        asked.append(pairs)
        return [float(i > j) for i, j in pairs]

    s = knockout(5, compare, seeds=[4, 3, 2, 1, 0])
    assert asked[0] == [(3, 0), (2, 1)]  # 4 has the bye; 3 meets the worst seed
    assert s.ranking[0] == 4 and s.calls == 4


def test_knockout_majority_of_votes_decides_a_match():
    votes = iter([1.0, 0.0, 1.0])  # 2 of 3 for candidate 0
    s = knockout(2, lambda pairs: [next(votes) for _ in pairs], votes=3, seeds=[0, 1])
    assert s.best == 0 and s.calls == 3


@pytest.mark.parametrize("rating", ["elo", "bt"])
def test_noiseless_round_robin_ranks_in_the_true_order(rating):
    s = round_robin(8, pairwise(strength), rating=rating, rng=random.Random(1))
    assert s.ranking == list(range(7, -1, -1)) and s.calls == 28


def test_a_noisy_judge_shows_up_in_knockout_as_p_to_the_rounds():
    # a judge right with probability p picks the best of 8 only by winning 3 matches: p^3
    for p in (0.8, 0.5):
        rng = random.Random(0)
        noisy = pairwise(lambda i, j: float((i > j) == (rng.random() < p)))
        wins = sum(knockout(8, noisy, rng=random.Random(t)).best == 7 for t in range(3000)) / 3000
        assert abs(wins - p ** 3) < 0.03, (p, wins)


def test_a_noisy_judge_orders_round_robin_less_well_than_a_clean_one():
    def mean_rank_error(p):
        rng = random.Random(0)
        noisy = pairwise(lambda i, j: float((i > j) == (rng.random() < p)))
        errs = [sum(abs(r - (7 - pos)) for pos, r in enumerate(round_robin(8, noisy, rng=random.Random(t)).ranking))
                for t in range(200)]
        return sum(errs) / len(errs)

    assert mean_rank_error(1.0) == 0 < mean_rank_error(0.8) < mean_rank_error(0.6)


def test_play_sends_each_round_of_every_tournament_in_one_batch():
    batches = []

    def compare(requests):
        batches.append(len(requests))
        return [float(i > j) for _, i, j in requests]

    out = play([knockout_plan(8), knockout_plan(4), reward_plan(4, "elo")], compare)
    assert batches == [4 + 2 + 6, 2 + 1, 1]  # rounds of 8, 4 and the all-pairs batch, side by side
    assert [s.best for s in out] == [7, 3, 3]


@pytest.mark.parametrize("mode", ["knockout", "elo", "wins"])
def test_group_rewards_lie_in_0_1_and_order_the_responses(mode):
    s = play([reward_plan(6, mode, opponents=5)], lambda rq: [float(i > j) for _, i, j in rq])[0]
    assert all(0.0 <= r <= 1.0 for r in s.scores)
    assert s.scores[5] == max(s.scores) and s.scores[0] == min(s.scores)
    if mode != "wins":  # knockout and elo span [0, 1] within the group
        assert s.scores[5] == 1.0 and (mode == "knockout" or s.scores[0] == 0.0)


# --- judge rewards in training ---

def chain_sum_task():
    return ReasoningGymTask("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                            "{question} Answer with just the number.", None, "first_number", 0, 1, 4, True, True)


def test_judge_rewards_score_each_group_by_its_own_tournament_and_report_agreement():
    task = chain_sum_task()
    ex = [task.train_example(0), task.train_example(1)]
    right = [ex[0].reference, ex[1].reference]
    # a judge that knows the answers: the response holding the reference wins
    oracle = RuleJudge(better=lambda a, b: any(a.strip() == r for r in right))
    rewards = JudgeRewards(task, PairJudge(oracle, "random"), "knockout")
    completions = [right[0], "1000", "1001", "1002", "1003", right[1], "1004", "1005"]
    graded = rewards.grade(completions, [ex[0]] * 4 + [ex[1]] * 4)
    assert [g.reward for g in graded][0] == 1.0 and [g.reward for g in graded][5] == 1.0
    assert [g.correct for g in graded] == [True, False, False, False, False, True, False, False]
    m = rewards.metrics()
    assert m["judge/calls"] == 6 and m["judge/verifier_agreement"] == 1.0 and m["judge/verifier_accuracy"] == 0.25
    assert oracle.seen == [4, 2]  # both groups' rounds in one batch each
    task.close()


def test_judge_rewards_of_a_resumed_run_repeat_the_first_runs():
    task = chain_sum_task()
    ex = [task.train_example(0), task.train_example(1)]
    completions = ["1", "22", "333", "4444", "5", "66", "777", "8888"]

    def rewards(mode):  # a fresh judge and fresh state, as after a restart; the judge's order is seeded
        j = JudgeRewards(task, PairJudge(RuleJudge(bias=1)), mode, seed=7)
        return [g.reward for g in j.grade(completions, [ex[0]] * 4 + [ex[1]] * 4)]

    for mode in ("knockout", "elo", "wins"):
        first = rewards(mode)
        assert rewards(mode) == first and len(set(first)) > 1
    task.close()


def test_a_judge_without_verdicts_gives_equal_rewards_and_is_counted():
    class Down:
        name = "down"

        def judge(self, items):
            return [Judgment(None, "cannot connect", "error") for _ in items]

    task = chain_sum_task()
    ex = task.train_example(0)
    for mode in ("knockout", "elo", "wins"):
        rewards = JudgeRewards(task, PairJudge(Down()), mode)
        graded = rewards.grade(["1", "2", "3", "4", "5", "6", "7", "8"], [ex] * 8)
        assert {g.reward for g in graded} == {0.5}  # coin-flip brackets would teach noise
        m = rewards.metrics()
        assert m["judge/uninformed_groups"] == 1 and m["judge/failures"] == m["judge/calls"] > 0
    task.close()


def test_random_order_does_not_favour_a_bracket_slot():
    # a judge that always says "Assistant 1" must not make any completion index win more often
    task = chain_sum_task()
    ex = task.train_example(0)
    wins = Counter()
    rewards = JudgeRewards(task, PairJudge(RuleJudge(bias=1)), "knockout")
    for t in range(600):
        graded = rewards.grade([f"{t}-{i}" for i in range(4)], [ex] * 4)
        wins[[g.reward for g in graded].index(1.0)] += 1
    assert all(110 < wins[i] < 190 for i in range(4)), wins
    task.close()


def test_judge_metrics_of_several_processes_sum_counts_and_average_rates():
    parts = [{"judge/calls": 6.0, "judge/verifier_accuracy": 0.5}, {"judge/calls": 4.0, "judge/verifier_accuracy": 0.25,
                                                                   "judge/verifier_agreement": 1.0}]
    assert combine(parts) == {"judge/calls": 10.0, "judge/verifier_accuracy": 0.375, "judge/verifier_agreement": 1.0}


def test_best_of_n_reports_the_pick_beside_oracle_majority_and_random():
    def sample(problem, text, correct):
        return Sample(problem, "sampled", f"q{problem}", text, text, "7", correct, "ok", "stop", 1, 0.0, False)

    samples = [sample(0, "7", True), sample(0, "6", False), sample(0, "6", False), sample(0, "5", False),
               sample(1, "2", False), sample(1, "3", False), sample(1, "3", False), sample(1, "4", False)]
    oracle = PairJudge(RuleJudge(better=lambda a, b: a == "7"), "random")
    m, picks = best_of_n(samples, oracle, ["knockout", "elo"])
    assert m["eval/pick_oracle"] == 0.5 and m["eval/pick_majority"] == 0.0 and m["eval/pick_random"] == 0.125
    assert m["eval/pick_knockout"] == 0.5 and m["eval/pick_elo"] == 0.5 and picks["knockout"][0] == 0
    assert m["eval/judge_calls_knockout"] == 6 and m["eval/judge_calls_elo"] == 12


# --- training a judge: the preference task ---

def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preference_task_rewards_plus_minus_one_and_randomises_the_order(tmp_path):
    rows = [{"query": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    task = PreferenceTask(write_pairs(tmp_path / "p.jsonl", rows), None, None, 0, 1, 10, for_training=True)
    held = task.eval_examples()
    assert len(held) == 10 and {e.metadata["chosen_shown"] for e in held} == {"1", "2"}
    ex = [task.train_example(i) for i in range(60)]
    assert [e.reference for e in ex] == [task.train_example(i).reference for i in range(60)]  # fixed by position
    for a, b in zip(ex[::2], ex[1::2]):  # positions 2i, 2i+1: one pair, both orders
        assert a.metadata["row"] is b.metadata["row"] and {a.reference, b.reference} == {"1", "2"}
    assert 8 < sum(e.reference == "1" for e in ex[::2]) < 22  # which order comes first is drawn per pair
    one = PreferenceTask(str(tmp_path / "p.jsonl"), None, None, 0, 1, 10, pair_orders="random")
    drawn = [one.train_example(i) for i in range(60)]
    assert [e.metadata["row"]["query"] for e in drawn[:3]] == ["q10", "q11", "q12"]  # a pair per position
    assert 15 < sum(e.reference == "1" for e in drawn) < 45
    e = ex[0]
    text = e.messages[-1]["content"]
    assert (text.index("good") < text.index("bad")) == (e.reference == "1")
    graded = task.grade([f"\\boxed{{Assistant {e.reference}}}", f"\\boxed{{Assistant {3 - int(e.reference)}}}",
                         "I cannot decide"], [e, e, e])
    assert [(g.reward, g.correct, g.status) for g in graded] == [(1.0, True, "ok"), (-1.0, False, "ok"),
                                                                 (-1.0, False, "no_answer")]


def test_preference_task_names_a_bad_row_by_file_and_line(tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", [{"query": "q", "chosen": "a", "rejected": "b"},
                                              {"query": "q", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"p.jsonl:2: field 'rejected' is missing"):
        PreferenceTask(path, None, None, 0, 1, 1)
    assert PreferenceTask(path, None, None, 0, 1, 1, skip_bad_rows=True).skipped_rows == 1
    with pytest.raises(ConfigError, match="needs task.data_path"):
        load_config(None, ["task.name=preference"])
    with pytest.raises(ConfigError, match="lacks"):
        load_config(None, ["task.name=preference", f"task.data_path={path}", "task.prompt_template={query}"])
    with pytest.raises(ConfigError, match="preference"):
        load_config(None, ["task.name=preference", f"task.data_path={path}", "judge.backend=local"])
    # a verdict cut off at the length limit is graded (no verdict: -1), never the 0 that beats a wrong verdict
    assert load_config(None, ["task.name=preference", f"task.data_path={path}"]).truncated_reward() is None


def test_judge_settings_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="judge.base_url"):
        load_config(None, ["judge.backend=http"])
    with pytest.raises(ConfigError, match="n >= 2"):
        load_eval_config(None, ["judge.backend=local", "n=1"])
    with pytest.raises(ConfigError, match="judge.select"):
        load_eval_config(None, ["judge.backend=local", "n=4", "judge.select=[swiss]"])
    with pytest.raises(ConfigError, match="hybrid.enabled"):
        load_config(None, ["judge.backend=local", "hybrid.enabled=true", "algo.advantage=hgpo"])
    with pytest.raises(ConfigError, match="judge.model"):
        load_config(None, ["judge.backend=http", "judge.base_url=http://127.0.0.1:1/v1"])
    with pytest.raises(ConfigError, match="every vote would be the same"):
        load_config(None, ["judge.backend=local", "judge.votes=3", "judge.temperature=0"])
    with pytest.raises(ConfigError, match="at least 2"):
        load_config(None, ["judge.backend=local", "rollout.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="twice"):
        load_eval_config(None, ["judge.backend=local", "n=4", "judge.select=[elo, elo]"])
    with pytest.raises(ConfigError, match="judge.select tournament"):
        load_eval_config(None, ["judge.backend=local", "n=4", "judge.select=[]"])


def test_pairs_join_distinct_right_and_wrong_answers_of_one_problem():
    def s(problem, text, correct):
        return {"problem": problem, "prompt": f"q{problem}", "completion": text, "correct": correct,
                "reference": "7", "answer": text}

    samples = [s(0, "7", True), s(0, " 7", True), s(0, "6", False), s(0, "5", False),
               s(1, "7", True), s(1, "7", True), s(2, "1", False)]
    pairs = make_pairs(samples, 10, random.Random(0))
    assert Counter(p["problem"] for p in pairs) == {0: 2}  # " 7" repeats "7"; 1 and 2 have one side only
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("7", "6"), ("7", "5")}
    assert make_pairs(samples, 1, random.Random(0))[0]["query"] == "q0"
    assert make_pairs(samples, 10, random.Random(0), exclude=frozenset({"q0"})) == []
