"""The vLLM rollout engine, on vLLM's CPU build (run in .venv-vllm: `.venv-vllm/bin/python -m pytest -m vllm`).

The model is a random 2-layer Llama built from a config with head_dim 64 (vLLM's CPU attention has
no kernel for the 16 of opo's `tiny`), with the embedded model's tokenizer.
"""

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opo.models import load_model, load_tokenizer, stop_token_ids

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = load_tokenizer("tiny")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # sampling defaults the engine must not apply (opo samples the plain tempered distribution)
    model.generation_config.update(top_k=1, top_p=0.5, repetition_penalty=2.0, do_sample=True)
    d = tmp_path_factory.mktemp("vllm-model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def policy_engine(model_dir):
    from opo.rollout.vllm import VLLMEngine

    model, tok = load_model(str(model_dir))
    engine = VLLMEngine(model, stop_token_ids(model, tok), dtype="float32", max_model_len=512, seed=0)
    yield model, tok, engine
    engine.close()


def prompts_of(tok, n=3):
    texts = ["What is 2 + 3?", "Name a colour.", "Count to five."][:n]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, return_dict=False)
            for t in texts]


@torch.no_grad()
def trainer_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # (L, V) positions predicting the completion
    return (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def max_gap(model, batch, temperature):
    return max(float((trainer_logprobs(model, r.prompt, r.completion, temperature) - torch.tensor(r.logprobs))
                     .abs().max()) for r in batch.rollouts)


def test_rollouts_keep_the_contract_and_the_tempered_log_probs(policy_engine):
    model, tok, engine = policy_engine
    prompts = prompts_of(tok)
    batch = engine.generate(prompts, [7, 8, 9], 4, 12, 0.7)
    assert len(batch) == 12 and batch.group_ids().tolist() == [7] * 4 + [8] * 4 + [9] * 4
    stops = set(stop_token_ids(model, tok))
    for i, r in enumerate(batch.rollouts):
        assert r.prompt == prompts[i // 4] and len(r.logprobs) == len(r.completion) >= 1
        assert r.finish == ("stop" if r.completion[-1] in stops else "length")
        assert r.finish == "stop" or len(r.completion) == 12
        assert not stops & set(r.completion[:-1])  # nothing after an end token
    assert len({tuple(r.completion) for r in batch.rollouts}) > 6  # K distinct samples, not K copies
    # the sampler's log-probs are those of the tempered distribution, without the model's top_k=1,
    # top_p or repetition penalty (which would put log-probs near 0 and repeat nothing)
    assert max_gap(model, batch, 0.7) < 1e-3


def test_every_end_id_stops_a_sample(policy_engine):
    # one vLLM engine per process (a second one's teardown resets vLLM's process-wide state), so
    # the same engine gets a second end id
    model, tok, engine = policy_engine
    prompts = prompts_of(tok, 1)
    first = engine.generate(prompts, [0], 1, 1, 0.0).rollouts[0].completion[0]  # the greedy first token
    ends = engine.stop_ids
    engine.stop_ids = sorted({*ends, first})
    try:
        r = engine.generate(prompts, [0], 1, 8, 0.0).rollouts[0]
    finally:
        engine.stop_ids = ends
    assert r.completion == [first] and r.finish == "stop"


def test_same_seed_same_samples_other_seed_other_samples(policy_engine):
    model, tok, engine = policy_engine
    prompts = prompts_of(tok, 2)

    def draw(seed):
        engine.generator.manual_seed(seed)
        return [r.completion for r in engine.generate(prompts, [0, 1], 3, 8, 1.0).rollouts]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_a_weight_sync_changes_the_samples(policy_engine):
    model, tok, engine = policy_engine
    prompts = prompts_of(tok)
    greedy = [r.completion for r in engine.generate(prompts, [0, 1, 2], 1, 8, 0.0).rollouts]
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        stale = engine.generate(prompts, [0, 1, 2], 2, 8, 1.0)
        assert max_gap(model, stale, 1.0) > 0.05  # before the sync vLLM still samples the old weights
        engine.sync_weights()
        fresh = engine.generate(prompts, [0, 1, 2], 2, 8, 1.0)
        assert max_gap(model, fresh, 1.0) < 1e-3
        assert [r.completion for r in engine.generate(prompts, [0, 1, 2], 1, 8, 0.0).rollouts] != greedy
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(original[n])
        engine.sync_weights()
    assert [r.completion for r in engine.generate(prompts, [0, 1, 2], 1, 8, 0.0).rollouts] == greedy


def test_a_lora_policy_reaches_vllm_as_merged_weights(policy_engine):
    from opo.config import LoraSettings
    from opo.lora import add_adapters

    model, tok, engine = policy_engine
    prompts = prompts_of(tok)
    greedy = [r.completion for r in engine.generate(prompts, [0, 1, 2], 1, 8, 0.0).rollouts]
    wrapped = add_adapters(model, LoraSettings(rank=4), "test")
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        assert max_gap(model, engine.generate(prompts, [0, 1, 2], 2, 8, 1.0), 1.0) > 0.05  # not synced yet
        engine.sync_weights()
        assert max_gap(model, engine.generate(prompts, [0, 1, 2], 2, 8, 1.0), 1.0) < 1e-3
    finally:
        wrapped.unload()  # the plain model back, for the other tests
        engine.sync_weights()
    assert [r.completion for r in engine.generate(prompts, [0, 1, 2], 1, 8, 0.0).rollouts] == greedy


def test_a_sampler_without_the_policys_weights_is_refused(policy_engine):
    model, tok, engine = policy_engine
    embed = model.get_input_embeddings().weight
    original = embed.detach().clone()
    try:
        with torch.no_grad():
            embed.mul_(20)  # the tied output layer too: logits 20x sharper than vLLM's
        with pytest.raises(ValueError, match="vLLM did not take some of LlamaForCausalLM's weights"):
            engine._check_sync()
        engine.sync_weights()
        engine._check_sync()
    finally:
        with torch.no_grad():
            embed.copy_(original)
        engine.sync_weights()


def test_offload_is_a_no_op_without_sleep_mode(policy_engine):
    model, tok, engine = policy_engine
    engine.offload()  # the CPU backend has no sleep mode; the engine was built without it
    assert not engine._asleep and len(engine.generate(prompts_of(tok, 1), [0], 2, 4, 1.0)) == 2


def test_forced_prefixes_are_refused(policy_engine):
    model, tok, engine = policy_engine
    with pytest.raises(NotImplementedError, match="rollout.engine=hf"):
        engine.generate(prompts_of(tok, 1), [0], 2, 8, 1.0, prefixes=[[1], [2]])


@pytest.mark.e2e
def test_opo_train_and_eval_with_the_vllm_engine(model_dir, tmp_path):
    run = tmp_path / "run"
    common = [f"model.path={model_dir}", "run.threads=1", "task.eval_size=6"]
    train = subprocess.run(
        [sys.executable, "-m", "opo", "train", *common, "rollout.engine=vllm", "steps=3", f"run.dir={run}",
         "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "train.eval_before=false",
         "checkpoint.every=2"], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "logprob_gap/mean" in r]
    assert len(steps) == 3
    for r in steps:
        # fp32 vLLM against the fp32 trainer: the gap is rounding, and TIS (auto) weights are ~1
        assert r["logprob_gap/max_abs"] < 1e-2 and r["logprob_gap/over_threshold"] == 0
        assert r["correction/weight_mean"] == pytest.approx(1.0, abs=1e-3)
    ev = subprocess.run(
        [sys.executable, "-m", "opo", "eval", *common, f"model.path={run / 'checkpoints' / 'step_0000003'}",
         "engine=vllm", "n=2", "k=1,2", "max_new_tokens=8", f"run.dir={tmp_path / 'eval'}"],
        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "pass@2" in ev.stdout
