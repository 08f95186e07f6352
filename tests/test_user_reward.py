"""User reward functions (task.reward_fn) run in worker processes under a hard deadline; a function
that raises, returns no finite number or hangs gives a defined reward and a status, never a crash."""

import json
from pathlib import Path

import pytest

from opo.config import ConfigError, load_config
from opo.rewards.grader import GraderPool
from opo.tasks import UserRewardTask, build_task
from opo.commands.train import train

REWARDS = '''
import os, time

def exact(completion, reference, metadata):
    print("printed output must not break the worker protocol")
    return completion.strip() == reference

def by_text(completion, reference, metadata):
    if completion == "raise":
        raise ZeroDivisionError("bug in the reward")
    if completion == "hang":
        time.sleep(10_000)
    if completion == "pid":
        return os.getpid()
    return {"nan": float("nan"), "inf": float("inf"), "none": None, "text": "1.0", "list": [1]}.get(completion, 0.5)

def explode(completion, reference, metadata):
    raise RuntimeError("reward function bug")

not_a_function = 3
'''


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return str(path)


@pytest.mark.parametrize("bad", ["raise", "nan", "inf", "none", "text", "list"])
def test_a_reward_that_raises_or_returns_no_finite_number_is_an_error(rewards, bad, capsys):
    with GraderPool(workers=1, timeout=30.0, fn=f"{rewards}:by_text") as pool:
        failed, fine = pool.map([[bad, "1", {}], ["ok", "1", {}]])
    assert (failed.value, failed.status) == (0.0, "error")
    assert (fine.value, fine.status) == (0.5, "ok")  # the same worker goes on grading
    assert "by_text" in capsys.readouterr().err  # the first failure says what went wrong


def test_a_hung_reward_is_killed_its_worker_replaced_and_later_samples_graded(rewards):
    with GraderPool(workers=1, timeout=1.0, fn=f"{rewards}:by_text") as pool:
        before, hung, after = pool.map([["pid", "1", {}], ["hang", "1", {}], ["pid", "1", {}]])
    assert [s.status for s in (before, hung, after)] == ["ok", "timeout", "ok"]
    assert hung.value == 0.0 and before.value != after.value  # a new worker process graded the last call


def test_user_reward_replaces_the_tasks_scorer_with_defined_rewards_on_failure(rewards):
    cfg = load_config(None, ["task.eval_size=3", f"task.reward_fn={rewards}:by_text", "task.reward_timeout=1",
                             "task.reward_on_error=-1", "task.grader_workers=1"])
    task = build_task(cfg.task)
    try:
        assert isinstance(task, UserRewardTask)
        ex = task.eval_examples()[0]
        graded = task.grade(["raise", "nan", "hang", "ok 12"], [ex] * 4)
    finally:
        task.close()
    assert [(g.reward, g.status) for g in graded] == [(-1.0, "error"), (-1.0, "error"), (-1.0, "timeout"), (0.5, "ok")]
    assert graded[3].answer == "12" and not graded[3].correct  # the task's extractor still fills the answer


def test_user_reward_on_a_jsonl_task_sees_the_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4", "tests": [1, 2]}) + "\n")
    (tmp_path / "r.py").write_text("def f(completion, reference, metadata):\n"
                                   "    return float(metadata['row']['tests'] == [1, 2] and completion == reference)\n")
    cfg = load_config(None, ["task.name=jsonl", f"task.data_path={data}", f"task.reward_fn={tmp_path / 'r.py'}:f"])
    task = build_task(cfg.task)
    try:
        (ex,) = task.eval_examples()
        right, wrong = task.grade(["4", "5"], [ex, ex])
    finally:
        task.close()
    assert (right.reward, right.correct, wrong.reward) == (1.0, True, 0.0)


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "must be 'module:function'"),
    ("opo_no_such_module:f", "ModuleNotFoundError"),
    ("missing_file.py:f", "file 'missing_file.py' does not exist"),
    ("{rewards}:nope", "has no attribute 'nope'"),
    ("{rewards}:not_a_function", "is a int, not a function"),
    ("opo.rewards.grader:as_number", None),  # an importable module's function is accepted
])
def test_reward_fn_is_checked_up_front_naming_the_key(rewards, spec, message):
    override = f"task.reward_fn={spec.format(rewards=rewards)}"
    if message is None:
        assert load_config(None, [override]).task.reward_fn == "opo.rewards.grader:as_number"
        return
    with pytest.raises(ConfigError, match=f"task.reward_fn=.*{message}"):
        load_config(None, [override])


def test_a_failing_reward_is_counted_and_the_run_finishes(rewards, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [
        "model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=4",
        "task.eval_size=2", "train.eval_max_new_tokens=4", "run.progress=false", "train.eval_before=false",
        "train.steps=2", f"run_dir={run}", f"task.reward_fn={rewards}:explode", "task.reward_on_error=0.25"])
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [(r["reward/errors"], r["reward/timeouts"], r["reward/grader_failures"]) for r in steps] == [(6, 0, 6)] * 2
    assert all(r["reward/mean"] == 0.25 for r in steps)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and {(s["status"], s["reward"]) for s in samples} == {("error", 0.25)}
    assert rows[-1]["eval/grader_errors"] == 2  # held-out evaluation is graded by the same function


@pytest.mark.parametrize("setting, expected", [("grade", 0.5), ("zero", 0.0), ("-0.25", -0.25)])
def test_truncated_completions_get_the_configured_reward(rewards, tmp_path, setting, expected):
    # a random tiny model almost never samples its end token within 3 tokens: every completion is cut off
    cfg = load_config(None, ["model.path=tiny", f"task.reward_fn={rewards}:by_text", "rollout.max_new_tokens=3",
                             f"rollout.truncated_reward={setting}", "rollout.prompts_per_step=2",
                             "rollout.samples_per_prompt=2", "train.steps=1", "train.eval_before=false",
                             "task.eval_size=2", "run.progress=false", f"run.dir={tmp_path / 'run'}"])
    train(cfg)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(s["finish"] == "length" and s["reward"] == expected for s in samples)
    assert row["length/truncated"] == 1.0 and row["reward/mean"] == expected


def test_truncated_reward_defaults_to_zero_for_math_and_grading_for_reasoning_gym(rewards):
    assert load_config(None, ["task.name=gsm8k"]).truncated_reward() == 0.0
    assert load_config(None, []).truncated_reward() is None
    # a user's reward function decides for itself (e.g. partial credit, length shaping)
    assert load_config(None, ["task.name=gsm8k", f"task.reward_fn={rewards}:exact"]).truncated_reward() is None
    with pytest.raises(ConfigError, match="rollout.truncated_reward"):
        load_config(None, ["rollout.truncated_reward=half"])


def test_a_reward_module_that_prints_at_import_still_grades_and_the_print_reaches_the_user(tmp_path, capsys):
    path = tmp_path / "loud.py"
    path.write_text('print("hello from import")\n\ndef f(completion, reference, metadata):\n    return 1.0\n')
    with GraderPool(workers=2, timeout=30.0, fn=f"{path}:f", output="[reward_fn] ") as pool:
        assert [s.status for s in pool.map([["a", "1", {}], ["b", "1", {}], ["c", "1", {}]])] == ["ok"] * 3
    assert capsys.readouterr().err.count("[reward_fn] hello from import\n") == 2  # once per worker


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rewards.py"


def test_what_a_reward_function_prints_reaches_the_user_prefixed(capsys):
    cfg = load_config(None, ["task.eval_size=3", f"task.reward_fn={FIXTURES}:chatty", "task.grader_workers=2",
                             "task.reward_timeout=2"])
    task = build_task(cfg.task)
    try:
        ex = task.eval_examples()[0]
        graded = task.grade(["first", "second", "hang", "third"], [ex] * 4)
    finally:
        task.close()
    # a printed line that looks like a worker's answer is not taken for one
    assert [(g.reward, g.status) for g in graded] == [(0.25, "ok"), (0.25, "ok"), (0.0, "timeout"), (0.25, "ok")]
    err = capsys.readouterr().err
    for completion in ("first", "second", "hang", "third"):  # also what a call printed before it hung
        for channel in ("stdout", "stderr", "fd 1"):
            assert f"[reward_fn] {channel}: grading {completion}\n" in err
    assert err.count('[reward_fn] [1.0, "ok", ""]\n') == 4


def test_the_math_grader_workers_stay_quiet(capsys):
    with GraderPool(workers=1, timeout=30.0) as pool:
        assert pool.map([["x^2", "x**2"]])[0].status == "ok"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value, shown", [("1e300", "1e+300"), ("-1e300", "-1e+300"), ("3.5e38", "3.5e+38"),
                                          ("10**400", "about 10^400")])
def test_a_reward_beyond_float32_is_an_error_naming_the_value(value, shown, capsys):
    cfg = load_config(None, ["task.eval_size=3", f"task.reward_fn={FIXTURES}:huge", "task.grader_workers=1",
                             "task.reward_on_error=-1"])
    task = build_task(cfg.task)
    try:
        ex = task.eval_examples()[0]
        big, in_range, plain = task.grade([value, "3e38", "x"], [ex] * 3)
    finally:
        task.close()
    assert (big.reward, big.status, big.correct) == (-1.0, "error", False)
    assert (in_range.reward, in_range.status) == (3e38, "ok") and (plain.reward, plain.status) == (0.5, "ok")
    err = capsys.readouterr().err  # the first failure names the value and the cause
    assert f"huge returned {shown}" in err and "beyond float32 range (3.4e38)" in err
