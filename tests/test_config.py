import dataclasses
import warnings

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opo.config import Config, ConfigError, describe, load_config, load_diagnose_config, load_eval_config, parse_value


def test_defaults_validate_and_describe_every_key():
    cfg = load_config()
    assert cfg.algo.advantage == "opo" and not cfg.off_policy
    text = describe()
    for section, values in cfg.to_dict().items():
        for name in values:
            assert f"{section}.{name} (" in text


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=3e-6", "train.steps=5", "algo.advantage_params={gamma: 0.9}",
                             "task.system_prompt=null", "resume=true", "run_dir=/tmp/x", "model.path=./m"])
    assert cfg.optim.lr == 3e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 5 and cfg.algo.advantage_params == {"gamma": 0.9}
    assert cfg.task.system_prompt is None and cfg.checkpoint.resume and cfg.train.run_dir == "/tmp/x"


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
        ("algo.dual_clip=3", "dual_clip only acts off-policy"),
        ("algo.clip_high=1.5", r"algo.clip_high must be in \[0, 1\)"),
        ("task.prompt_template=hi", "must contain"),
        ("model.precision=fp16", "model.precision='fp16' is not allowed"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


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
        load_config(None, ["train.overwrite=true", "checkpoint.resume=true", "train.run_dir=x"])
