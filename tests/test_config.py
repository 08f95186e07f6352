import pytest
from hypothesis import given
from hypothesis import strategies as st

from opo.config import Config, ConfigError, describe, load_config, parse_value


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


@given(st.text(max_size=20), st.text(max_size=20))
def test_override_parser_only_raises_config_errors(key, value):
    try:
        load_config(None, [f"{key}={value}"])
    except ConfigError:
        pass
