"""The Python API (``import opo``): configs from Python values with the command line's checks, a reward
function passed as a function, training, evaluation and reading a run; and the README's example, run as
it is written."""

import functools
import importlib.machinery
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import opo
from opo.config import ConfigError, load_config, load_eval_config
from opo.rewards.grader import GraderPool
from opo.rundir import config_changes
from opo.tasks import build_task

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = {"model.path": "tiny", "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 4},
        "train.steps": 1, "task.eval_size": 2, "train.eval_max_new_tokens": 4, "run.progress": False}

REWARDS = '''
def score(completion, reference, metadata):
    return 0.625

def one(completion, reference, metadata):
    return 1.0
'''


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """A reward module importable only through this process's sys.path (as one beside a script is)."""
    folder = tmp_path / "importable"
    folder.mkdir()
    (folder / "opo_api_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "opo_api_rewards", raising=False)
    import opo_api_rewards

    yield opo_api_rewards
    sys.modules.pop("opo_api_rewards", None)


def fake_main(monkeypatch, code: str, file=None, spec=None) -> types.ModuleType:
    """``code`` run as the ``__main__`` module of a script at ``file`` (None: an interactive session)."""
    main = types.ModuleType("__main__")
    main.__spec__ = spec
    if file is not None:
        main.__file__ = str(file)
    exec(compile(code, str(file or "<stdin>"), "exec"), main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_import_opo_loads_neither_torch_nor_the_config_modules():
    code = ("import sys, opo\n"
            "print(sorted(m for m in ('torch', 'yaml', 'opo.config', 'opo.api') if m in sys.modules))\n"
            "opo.Config; print('opo.config' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True False"]


def test_public_names_are_the_modules_objects():
    from opo import api, config, errors

    assert {name: getattr(opo, name) for name in opo.__all__} == {
        "Config": config.Config, "EvalConfig": config.EvalConfig, "ConfigError": errors.ConfigError,
        "TrainResult": api.TrainResult, "eval_config": api.eval_config, "evaluate_model": api.evaluate_model,
        "load_run": api.load_run, "train": api.train, "train_config": api.train_config}
    assert set(opo.__all__) <= set(dir(opo)) and sorted(opo.__all__) == sorted(opo._PUBLIC)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        opo.nope


def test_train_config_from_dotted_nested_and_short_keys_over_a_yaml_file_is_the_command_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 2.0e-5}\ntask: {generator_args: {min_terms: 3, max_terms: 3}}\ntrain: {steps: 9}\n")
    cfg = opo.train_config({"rollout": {"samples_per_prompt": 4, "temperature": 1}, "algo.advantage": "grpo",
                            "steps": 5, "task": "gsm8k", "task.eval_size": 7, "run_dir": "runs/x"}, path=path)
    cli = load_config(str(path), ["rollout.samples_per_prompt=4", "rollout.temperature=1", "algo.advantage=grpo",
                                  "steps=5", "task=gsm8k", "task.eval_size=7", "run_dir=runs/x"])
    assert cfg.to_dict() == cli.to_dict()
    assert (cfg.optim.lr, cfg.train.steps, cfg.task.name, cfg.rollout.temperature) == (2e-5, 5, "gsm8k", 1.0)
    assert cfg.task.generator_args == {"min_terms": 3, "max_terms": 3}  # a mapping value, not a section
    as_text = opo.train_config(["rollout.samples_per_prompt=4", "steps=5", "task.prompt_template=Q: {question}"])
    assert (as_text.rollout.samples_per_prompt, as_text.train.steps, as_text.task.prompt_template) == \
        (4, 5, "Q: {question}")
    ev = opo.eval_config({"task": "math500", "limit": 3, "k": [1, 2], "n": 2})
    assert ev.to_dict() == load_eval_config(None, ["task=math500", "limit=3", "k=1,2", "n=2"]).to_dict()


@pytest.mark.parametrize("settings, override", [
    ({"rollout.prompts": 2}, "rollout.prompts=2"),
    ({"rollout": {"prompts": 2}}, "rollout.prompts=2"),
    ({"rollout": {"prompts_per_step": 0}}, "rollout.prompts_per_step=0"),
    ({"optim.lr": "fast"}, "optim.lr=fast"),
    ({"algo.advantage": "nope"}, "algo.advantage=nope"),
    ({"train.seed": 3}, "train.seed=3"),
    ({"algo": {"mini_batches": 2}}, "algo.mini_batches=2"),
    ({"task.reward_fn": "opo_no_such_module:f"}, "task.reward_fn=opo_no_such_module:f"),
])
def test_a_bad_setting_raises_the_command_lines_message_naming_the_key(settings, override):
    with pytest.raises(ConfigError) as cli:
        load_config(None, [override])
    with pytest.raises(ConfigError) as api:
        opo.train_config(settings)
    assert str(api.value) == str(cli.value) and override.split("=")[0] in str(api.value)


def test_a_section_given_a_value_and_settings_given_as_text_are_refused():
    with pytest.raises(ConfigError, match="section 'rollout' must be a mapping of its keys, got 3"):
        opo.train_config({"rollout": 3})
    with pytest.raises(ConfigError, match="settings must be a mapping or a list"):
        opo.train_config("steps=3")
    with pytest.raises(ConfigError, match="^n must be >= 0, got -1$"):
        opo.eval_config({"n": -1})


def test_a_module_function_is_kept_by_its_module_name_and_workers_import_it(rewards):
    cfg = opo.train_config({"task.reward_fn": rewards.score, "task.eval_size": 3, "task.grader_workers": 1})
    assert cfg.task.reward_fn == "opo_api_rewards:score"
    cfg.task.reward_fn = rewards.one  # set in code: the same conversion
    assert cfg.task.reward_fn == "opo_api_rewards:one"
    cfg.task.reward_fn = rewards.score
    task = build_task(cfg.validate().task)
    try:  # the worker finds a module that only this process's sys.path holds
        graded = task.grade(["a", "b"], task.eval_examples()[:2])
    finally:
        task.close()
    assert [(g.reward, g.status) for g in graded] == [(0.625, "ok")] * 2


def test_the_config_with_a_function_stays_yaml_and_a_reload_compares_equal(rewards, tmp_path):
    cfg = opo.train_config({"task.reward_fn": rewards.score})
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)  # no function object: safe_dump would raise
    assert "reward_fn: opo_api_rewards:score" in text and "function" not in text
    (tmp_path / "config.yaml").write_text(text)
    again = load_config(str(tmp_path / "config.yaml"))  # e.g. opo train on the run's config.yaml
    assert again.to_dict() == cfg.to_dict() and config_changes(yaml.safe_load(text), again.to_dict()) == []


SCRIPT = '''
import pathlib
pathlib.Path(__file__).with_suffix(".runs").open("a").write("ran\\n")  # each time this file runs

def score(completion, reference, metadata):
    return 0.375

if __name__ == "__main__":
    raise SystemExit("a worker must not run this")
'''


def test_a_function_of_the_script_being_run_is_named_by_its_file_which_workers_import(tmp_path, monkeypatch):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    main = fake_main(monkeypatch, SCRIPT.split("if __name__")[0], file=script)  # the script, as `python script.py`
    cfg = opo.train_config({"task.reward_fn": main.score, "task.eval_size": 3, "task.grader_workers": 1})
    assert cfg.task.reward_fn == f"{script.resolve()}:score"
    marks = script.with_suffix(".runs")
    assert marks.read_text() == "ran\n"  # validation did not run the script a second time
    task = build_task(cfg.task)
    try:
        graded = task.grade(["a"], task.eval_examples()[:1])
    finally:
        task.close()
    assert (graded[0].reward, graded[0].status) == (0.375, "ok")
    assert marks.read_text() == "ran\nran\n"  # the worker imported the file, without its __main__ part


def test_a_function_of_a_module_run_with_python_m_is_named_by_the_module(monkeypatch):
    main = fake_main(monkeypatch, "def score(completion, reference, metadata):\n    return 1.0\n",
                     file="/somewhere/pkg/mod.py", spec=importlib.machinery.ModuleSpec("pkg.mod", None))
    from opo.rewards.functions import function_spec

    assert function_spec(main.score) == "pkg.mod:score"


class Scorer:
    def __call__(self, completion, reference, metadata):
        return 1.0

    @staticmethod
    def static(completion, reference, metadata):
        return 1.0


def _closure():
    bonus = 1.0

    def inner(completion, reference, metadata):
        return bonus

    return inner


@pytest.mark.parametrize("make, what", [
    (lambda mp: lambda c, r, m: 1.0, "a lambda"),
    (lambda mp: _closure(), "_closure.<locals>.inner, defined inside a function or class"),
    (lambda mp: Scorer.static, "Scorer.static, defined inside a function or class"),
    (lambda mp: Scorer(), "is not a plain Python function"),
    (lambda mp: functools.partial(Scorer.static, "x"), "is not a plain Python function"),
    (lambda mp: len, "is not a plain Python function"),
    (lambda mp: fake_main(mp, "def score(c, r, m):\n    return 1.0\n").score, "defined in an interactive session"),
])
def test_a_function_workers_cannot_import_by_name_is_refused_in_one_line(make, what, monkeypatch):
    fn = make(monkeypatch)
    with pytest.raises(ConfigError) as built:
        opo.train_config({"task.reward_fn": fn})
    with pytest.raises(ConfigError) as assigned:
        opo.Config().task.reward_fn = fn
    for e in (built, assigned):
        message = str(e.value)
        assert message.startswith("task.reward_fn: ") and what in message and "\n" not in message
        assert "at the top level of a .py file" in message


def test_the_text_form_is_kept_as_written():
    assert opo.train_config({"task.reward_fn": "opo.rewards.grader:as_number"}).task.reward_fn == \
        "opo.rewards.grader:as_number"
    cfg = opo.Config()
    cfg.task.reward_fn = "opo.rewards.grader:as_number"
    assert cfg.validate().task.reward_fn == "opo.rewards.grader:as_number"


def test_train_checks_a_config_changed_in_code_again():
    cfg = opo.train_config({"model.path": "tiny"})
    cfg.rollout.samples_per_prompt = 0
    with pytest.raises(ConfigError, match="rollout.samples_per_prompt must be >= 1, got 0"):
        opo.train(cfg)
    with pytest.raises(TypeError, match="expected a Config"):
        opo.train(opo.eval_config())


def test_train_returns_its_results_and_load_run_reads_the_same(rewards, tmp_path):
    run_dir = tmp_path / "run"
    result = opo.train(opo.train_config({**TINY, "task.reward_fn": rewards.score, "run.dir": str(run_dir)}))
    assert result.run_dir == run_dir and result.stopped is None
    assert result.summary == json.loads((run_dir / "summary.json").read_text()) and "after" in result.summary
    steps = [row for row in result.metrics if "reward/mean" in row]
    evals = [row for row in result.metrics if "eval/accuracy" in row]
    assert [(r["step"], r["reward/mean"], r["reward/errors"]) for r in steps] == [(1, 0.625, 0)]  # our function
    assert [r["step"] for r in evals] == [0, 1]
    assert result.checkpoint == run_dir / "checkpoints" / "step_0000001" and result.checkpoint.is_dir()
    assert result.config["task"]["reward_fn"] == "opo_api_rewards:score"
    assert result.config == yaml.safe_load((run_dir / "config.yaml").read_text())
    loaded = opo.load_run(str(run_dir))
    assert (loaded.summary, loaded.metrics, loaded.config, loaded.checkpoint) == \
        (result.summary, result.metrics, result.config, result.checkpoint)
    with pytest.raises(ValueError, match="is not an opo train run directory: no config.yaml or metrics.jsonl"):
        opo.load_run(tmp_path)
    with pytest.raises(ValueError, match="it does not exist"):
        opo.load_run(tmp_path / "nope")


def test_evaluate_model_on_the_tiny_model_with_a_reward_function(rewards, tmp_path):
    out = tmp_path / "eval"
    metrics = opo.evaluate_model({"model.path": "tiny", "task": "gsm8k", "limit": 2, "n": 2, "k": [1, 2],
                                  "max_new_tokens": 4, "out_dir": str(out), "task.reward_fn": rewards.one,
                                  "task.grader_workers": 1, "run.progress": False})
    assert metrics["eval/n"] == 2 and metrics["eval/accuracy"] == 1.0  # every answer graded 1 by `one`
    assert metrics["eval/pass@2"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task"]["reward_fn"] == "opo_api_rewards:one" and summary["metrics"] == metrics


UNGUARDED = '''
import opo

def score(completion, reference, metadata):
    return 1.0

opo.train({{"model.path": "tiny", "run.dir": "{never}"}})  # no `if __name__ == "__main__":`
'''


def test_training_code_a_worker_imports_with_the_script_stops_there_saying_why(tmp_path, capsys):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(never=tmp_path / "never"))
    with GraderPool(workers=1, timeout=30.0, fn=f"{script}:score", output="[reward_fn] ") as pool:
        assert [s.status for s in pool.map([["a", "1", {}]])] == ["error"]
    err = capsys.readouterr().err
    assert "[reward_fn] RuntimeError: opo.train() was called while a reward worker process imported" in err
    assert "if __name__ == \"__main__\":" in err and not (tmp_path / "never").exists()


def readme_example() -> str:
    """The first python block after the README's "Python API" heading."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.e2e
def test_the_readme_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "api-example"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"]["reward_fn"] == f"{script.resolve()}:reward"  # the function, by its file
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward/mean" in r]
    assert [(r["step"], r["reward/errors"], r["reward/timeouts"]) for r in steps] == [(1, 0, 0), (2, 0, 0)]
    out = proc.stdout
    assert str(Path("runs/api-example/checkpoints/step_0000002")) in out
    assert re.search(r"^\[\d\.\d+, \d\.\d+\]$", out, re.M)  # the two steps' mean rewards
    assert "'eval/n': 2" in out and (tmp_path / "runs" / "api-example-eval" / "summary.json").is_file()
