import dataclasses
from pathlib import Path
import warnings

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opo.config import Config, ConfigError, describe, load_config, load_diagnose_config, load_eval_config, parse_value


def test_defaults_validate_and_describe_every_key():
    cfg = load_config()
    assert cfg.algo.advantage == "opo" and not cfg.off_policy
    text = describe(Config())

    def keys(values, prefix):  # nested sections (model.lora, train.wandb) down to their keys
        for name, value in values.items():
            yield from keys(value, f"{prefix}{name}.") if isinstance(value, dict) and name not in (
                "generator_args", "advantage_params", "loss_params") else [f"{prefix}{name}"]

    listed = list(keys(cfg.to_dict(), ""))
    assert "model.lora.rank" in listed and "train.wandb.project" in listed
    for key in listed:
        assert f"{key} (" in text, key


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=3e-6", "train.steps=5", "algo.advantage=reinforce_pp",
                             "algo.advantage_params={gamma: 0.9}", "task.system_prompt=null", "resume=true", "run_dir=/tmp/x", "model.path=./m"])
    assert cfg.optim.lr == 3e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 5 and cfg.algo.advantage_params == {"gamma": 0.9}
    assert cfg.task.system_prompt is None and cfg.checkpoint.resume and cfg.run.dir == "/tmp/x"


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algo:\n  advantage: grpo\nrollout:\n  samples_per_prompt: 4\n")
    cfg = load_config(str(p), ["rollout.samples_per_prompt=6"])
    assert cfg.algo.advantage == "grpo" and cfg.rollout.samples_per_prompt == 6


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.nope=1", "unknown config key 'algo.nope'; keys of 'algo'"),
        ("nope.x=1", "unknown config key 'nope.x': no section 'nope'"),
        ("lr=1", "unknown config key 'lr'"),
        ("train.steps=abc", "train.steps must be int"),
        ("train.steps=true", "train.steps must be int"),
        ("train.steps=-1", "train.steps must be >= 0"),
        ("algo.advantage=ppo", "algo.advantage='ppo' is not allowed; choose one of: .*grpo"),
        ("algo.aggregation=mean", "token-mean"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("rollout.temperature=0", "rollout.temperature must be > 0"),
        ("algo.mini_batches=3", "must divide rollout.prompts_per_step"),
        ("algo.ppo_epochs=2", "needs algo.loss=ppo_clip"),
        ("algo.loss_params={clip: 1}", "does not fit algo.loss=pg, which takes: no parameters"),
        ("algo.advantage_params={gamma: 0.9}", "does not fit algo.advantage=opo, which takes: no parameters"),
        ("train.seed=1", "'train.seed' is now 'run.seed'"),
        ("task.prompt_template=hi", "must contain"),
        ("run.precision=fp16", "run.precision='fp16' is not allowed"),
        ("model.precision=fp32", "'model.precision' is now 'run.precision'"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("params, message", [
    ("{dual_clip: 3}", "dual_clip only acts off-policy"),
    ("{clip_high: 1.5}", r"cannot be used with algo.loss=ppo_clip: clip_low and clip_high must be in \[0, 1\)"),
    ("{dual_clip: 0.5}", "dual_clip must be > 1"),
    ("{clip: 0.2}", "does not fit algo.loss=ppo_clip, which takes: clip_low, clip_high, dual_clip"),
])
def test_loss_params_are_checked_by_the_loss_itself(params, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["algo.loss=ppo_clip", f"algo.loss_params={params}"])
    cfg = load_config(None, ["algo.loss=ppo_clip", "algo.mini_batches=2", "algo.loss_params={clip_high: 0.28}"])
    assert cfg.algo.loss_params == {"clip_high": 0.28}


def test_text_values_mean_the_same_on_the_command_line_and_in_a_file(tmp_path):
    """A prompt with ': ' or braces is text on the command line; in YAML it must be quoted, and an
    unquoted one is refused with a message saying how to quote it, not a type error."""
    template = "Solve: {question} Put it in \\boxed{}."
    cfg = load_config(None, [f"task.prompt_template={template}", "run.dir=2026-11-26", "optim.lr=1e-5"])
    p = tmp_path / "c.yaml"
    p.write_text(f"task:\n  prompt_template: '{template}'\nrun:\n  dir: 2026-11-26\noptim:\n  lr: 1e-5\n")
    from_file = load_config(str(p))
    assert from_file.task.prompt_template == cfg.task.prompt_template == template
    assert from_file.run.dir == cfg.run.dir == "2026-11-26" and from_file.optim.lr == cfg.optim.lr == 1e-5
    p.write_text("task:\n  prompt_template: Solve: {question}\n")
    with pytest.raises(ConfigError, match="must be quoted"):
        load_config(str(p))
    p.write_text("task:\n  prompt_template: {question}\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(str(p))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("algo: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'algo' must be a mapping"):
        load_config(str(p))


@given(st.text(max_size=40))
def test_parse_value_never_crashes(text):
    parse_value(text)


def _keys(obj, prefix=""):
    """Every dotted key of a nested config."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


_KEYS = _keys(Config())
_LOADERS = st.sampled_from([load_config, load_eval_config, load_diagnose_config])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), st.dates())
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=3)),
    max_leaves=6)
_KEY_TEXT = st.one_of(st.sampled_from(_KEYS), st.sampled_from(_KEYS).map(lambda k: k + ".x"), st.text(max_size=15))
_VALUE_TEXT = st.one_of(
    _VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("...\n").strip()),
    st.text(max_size=20),
    st.sampled_from(["2001-13-01", "0000-00-00", "1e999", "-.inf", ".nan", "1,a", "0,;", "{a: [1, {b: 2}]}", "&a [*a]",
                     "!!python/object:os.system", "[", "0x1F"]),
)


@settings(max_examples=400, deadline=None)
@given(_KEY_TEXT, _VALUE_TEXT, _LOADERS)
def test_override_parser_only_raises_config_errors(key, value, loader):
    """Found: a date-like value that is no date ('0000-00-00') and non-numbers in optim.betas crashed."""
    try:
        loader(None, [f"{key}={value}"])
    except ConfigError:
        pass


_SECTIONS = [f.name for f in dataclasses.fields(Config())]
_NAMES = sorted({k.split(".")[-1] for k in _KEYS})
_SECTION = st.dictionaries(st.one_of(st.sampled_from(_NAMES), st.text(max_size=5), st.integers(), st.none()), _VALUES,
                           max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.dictionaries(st.one_of(st.sampled_from(_SECTIONS), st.text(max_size=5), st.integers()),
                                 st.one_of(_SECTION, _VALUES), max_size=4), _VALUES), _LOADERS)
def test_config_files_only_raise_config_errors(tmp_path_factory, data, loader):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        loader(str(path))
    except ConfigError:
        pass


def test_opo_with_per_sequence_token_mean_warns_that_the_baseline_is_not_optimal():
    with pytest.warns(UserWarning, match="no longer the optimal one"):
        load_config(None, ["algo.aggregation=seq-mean-token-mean"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["algo.aggregation=seq-mean-token-sum"])
        load_config(None, ["algo.advantage=grpo", "algo.aggregation=seq-mean-token-mean"])


def test_overwrite_and_resume_together_are_refused():
    with pytest.raises(ConfigError, match="choose one"):
        load_config(None, ["train.overwrite=true", "checkpoint.resume=true", "run.dir=x"])


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_config_files_load(path):
    load_config(path)


def test_override_text_and_numbers_inside_mappings():
    cfg = load_config(None, ["task.system_prompt=", "model.path= 'my dir' ", "algo.loss=ppo_clip",
                             "algo.loss_params={clip_low: 1e-1}", "task.prompt_template=Q: {question}"])
    assert cfg.task.system_prompt is None and cfg.model.path == "my dir"
    assert cfg.algo.loss_params == {"clip_low": 0.1} and cfg.task.prompt_template == "Q: {question}"


def test_a_config_changed_in_code_is_checked_by_validate():
    cfg = Config()
    cfg.run.precision = "bf17"
    with pytest.raises(ConfigError, match="run.precision='bf17' is not allowed"):
        cfg.validate()


def test_doubled_braces_in_a_template_get_a_warning():
    with pytest.warns(UserWarning, match="only the named fields"):
        load_config(None, ["task.prompt_template={question} \\boxed{{}}"])
