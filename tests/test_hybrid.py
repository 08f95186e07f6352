"""Hybrid thinking: formats, mode tags, HGPO's inputs, HAcc, and a training step end to end."""

import json

import pytest

from opo.commands.eval import format_table
from opo.commands.train import train
from opo.config import EvalConfig, HybridConfig, load_config
from opo.hybrid import NO_THINK, THINK, ModeTokens, direct_response, hybrid_extras, thinking_response
from opo.hybrid_eval import HybridSample, hybrid_metrics, reference_mode
from opo.models import load_model
from opo.rollout.base import Rollout, RolloutBatch
from opo.tasks.base import Example

H = HybridConfig()
TAGS = [H.think_tag, H.think_end, H.no_think_tag, H.no_think_end]


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    """A tiny random model whose tokenizer has the four tags as single tokens, saved as a model directory."""
    model, tok = load_model("tiny", seed=0)
    tok.add_special_tokens({"additional_special_tokens": TAGS})
    model.resize_token_embeddings(len(tok))
    path = tmp_path_factory.mktemp("hybrid_tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def test_formats():
    assert thinking_response(H, " 2 + 3 = 5 ", "5") == "<think>\n2 + 3 = 5\n</think>\n\n5"
    assert direct_response(H, " 5\n") == "<no_think>5</no_think>"


def test_tags_must_be_single_tokens(tiny):
    _, tok = tiny  # the embedded tokenizer splits '<think>' into pieces
    with pytest.raises(ValueError, match="hybrid.think_tag='<think>' is .* tokens"):
        ModeTokens.of(tok, H)


def test_mode_and_answer_part(hybrid_dir):
    _, tok = hybrid_dir
    m = ModeTokens.of(tok, H)
    assert len({m.think, m.think_end, m.no_think, m.no_think_end}) == 4
    assert m.mode_of([m.think, 5]) == THINK and m.mode_of([m.no_think]) == NO_THINK and m.mode_of([5, m.think]) is None
    assert m.answer_tokens([m.think, 5, 6, m.think_end, 7, 8]) == [7, 8]
    assert m.answer_tokens([m.think, 5, 6]) == []  # thinking that never ended has no answer
    assert m.answer_tokens([m.no_think, 7, m.no_think_end, 9]) == [7]
    assert m.answer_tokens([m.no_think, 7, 8]) == []  # a direct answer that never closed has none either
    assert m.answer_tokens([7, 8]) == [7, 8]
    assert m.prefixes(2, 4) == [[m.think], [m.think], [m.no_think], [m.no_think]] * 2


def test_hybrid_extras_mark_the_tag(hybrid_dir):
    _, tok = hybrid_dir
    m = ModeTokens.of(tok, H)
    batch = RolloutBatch([Rollout([1], [m.think, 5, 6], [-0.1] * 3, "stop", 0, {"forced": 1}),
                          Rollout([1], [m.no_think, 5], [-0.2] * 2, "stop", 0, {"forced": 1})])
    _, mask, _ = batch.completion_tensors(0)
    extras = hybrid_extras(m, batch, mask)
    assert extras["modes"].tolist() == [1, 0]
    assert extras["tag_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="forced mode tag"):
        hybrid_extras(m, RolloutBatch([Rollout([1], [5], [0.0], "stop", 0, {"forced": 0})]), mask[:1, :1])


def sample(problem, kind, reward, length, mode=None):
    return HybridSample(problem, kind, mode or (kind if kind != "free" else None), "", None, "", reward, reward == 1.0,
                        "ok", "stop", length)


def test_reference_mode_reward_then_length():
    think = [sample(0, "think", 1.0, 30), sample(0, "think", 1.0, 30)]
    no = [sample(0, "no_think", 1.0, 5), sample(0, "no_think", 0.0, 5)]
    assert reference_mode(think, no, margin=0.0) == THINK  # 1.0 vs 0.5
    assert reference_mode(think, no, margin=0.5) == NO_THINK  # within the margin: the shorter mode
    assert reference_mode(think[:1], no[:1], margin=0.0) == NO_THINK  # equal rewards: the shorter
    same = [sample(0, "think", 1.0, 5)]
    assert reference_mode(same, no[:1], margin=0.0) == NO_THINK  # equal lengths too: not thinking


def test_hacc_think_rate_and_groups_hand_computed():
    # problem 0: thinking is better, the model thinks (agree); problem 1: equal rewards, no-think is
    # shorter, the model thinks (disagree); problem 2: no-think is better, the model gives no tag (disagree)
    s = [sample(0, "think", 1.0, 20), sample(0, "no_think", 0.0, 4), sample(0, "free", 1.0, 20, "think"),
         sample(1, "think", 1.0, 20), sample(1, "no_think", 1.0, 4), sample(1, "free", 1.0, 18, "think"),
         sample(2, "think", 0.0, 20), sample(2, "no_think", 1.0, 4), sample(2, "free", 0.0, 6, "")]
    s[-1].mode = None
    examples = [Example([], "", {"level": lv}) for lv in ("hard", "easy", "easy")]
    m = hybrid_metrics(s, examples, HybridConfig(group_by="level"))
    assert m["hybrid/hacc"] == pytest.approx(1 / 3)
    assert m["hybrid/think_rate"] == pytest.approx(2 / 3) and m["hybrid/untagged_rate"] == pytest.approx(1 / 3)
    assert m["hybrid/reference_think_rate"] == pytest.approx(1 / 3)
    assert m["eval/accuracy"] == pytest.approx(2 / 3) and m["eval/length"] == pytest.approx(44 / 3)
    assert m["hybrid/think_accuracy"] == pytest.approx(2 / 3) and m["hybrid/no_think_length"] == 4
    assert m["hybrid/by_level/hard/hacc"] == 1.0 and m["hybrid/by_level/easy/hacc"] == 0.0
    assert m["hybrid/by_level/easy/think_rate"] == 0.5 and m["eval/by_level/easy/n"] == 2
    table = format_table({**m, "time/eval_s": 1.0}, EvalConfig(hybrid=HybridConfig(enabled=True)))
    assert "hacc" in table and "level/easy" in table and "2 per mode" in table


def test_hgpo_needs_hybrid_and_even_groups():
    with pytest.raises(Exception, match="hybrid.enabled=true"):
        load_config(overrides=["algo.advantage=hgpo"])
    with pytest.raises(Exception, match="must be even"):
        load_config(overrides=["hybrid.enabled=true", "rollout.samples_per_prompt=3"])
    with pytest.raises(Exception, match="distinct"):
        load_config(overrides=["hybrid.enabled=true", "hybrid.no_think_tag=<think>"])


def test_hgpo_training_step_and_hybrid_eval(hybrid_dir, tmp_path):
    path, _ = hybrid_dir
    cfg = load_config(overrides=[
        f"model.path={path}", "hybrid.enabled=true", "algo.advantage=hgpo", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6", "task.eval_size=3", "train.eval_max_new_tokens=6",
        "train.steps=2", "run.progress=false", "run.deterministic=true", "train.micro_batch_tokens=64",
        "hybrid.group_by=num_terms", f"run.dir={tmp_path / 'run'}"])
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "reward/mean" in r)
    for key in ("mode/think_wins", "mode/reward_think", "mode/length_no_think", "mode/p_think"):
        assert key in step, key
    assert 0 < step["mode/p_think"] < 1
    assert "hybrid/hacc" in summary["after"] and "hybrid/by_num_terms/2/think_rate" in summary["after"]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["mode"] for s in samples[:4]] == ["think", "think", "no_think", "no_think"]
