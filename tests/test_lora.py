"""LoRA through PEFT (model.lora): the adapted policy is what samples, trains, checkpoints and evaluates."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opo import lora
from opo.config import Config, ConfigError, LoraSettings, load_eval_config
from opo.models import load_model
from opo.rollout.hf import HFEngine
from test_update import cfg_for, step_data, update

REWARD = Path(__file__).parent / "fixtures" / "rewards.py"
IDS = torch.tensor([[1, 5, 9, 22, 40, 7]])


def adapted(rank=4, randomize=True, **settings):
    """The tiny model with fresh adapters (B random unless ``randomize`` is False: B = 0 is the base)."""
    model, tok = load_model("tiny", seed=0)
    wrapped = lora.add_adapters(model, LoraSettings(rank=rank, **settings), "tiny")
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model, tok, wrapped


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_fresh_adapters_start_at_the_base_policy_and_only_they_train(tiny):
    base, _ = tiny
    model, _, _ = adapted(randomize=False)
    assert torch.equal(logits(model), logits(base))  # B = 0: W + (alpha / r) B A = W
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    counts = lora.parameter_counts(model)
    # 2 layers x 7 linear layers x r (in + out); the embeddings are tied (counted once)
    expected = 2 * 4 * sum(i + o for i, o in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    assert counts["params/trainable"] == expected
    assert counts["params/total"] == sum(p.numel() for p in base.parameters()) + expected


def test_merged_parameters_are_the_adapted_policy_under_the_plain_names(tiny):
    model, tok, wrapped = adapted()
    merged = dict(lora.merged_parameters(model.named_parameters(remove_duplicate=False), lora.lora_layers(model)))
    plain_names = {n for n, _ in tiny[0].named_parameters(remove_duplicate=False)}
    assert set(merged) == plain_names  # lm_head.weight included: tied weights under every name
    plain = copy.deepcopy(tiny[0])
    plain.load_state_dict(merged)
    assert float((logits(plain) - logits(model)).abs().max()) < 1e-5
    assert float((logits(plain) - logits(tiny[0])).abs().max()) > 1e-3  # the adapters do change the policy
    for name, p in copy.deepcopy(wrapped).merge_and_unload().named_parameters():  # PEFT's own merge agrees
        assert torch.allclose(merged[name], p, atol=1e-6), name


def test_an_adapter_checkpoint_loads_as_its_base_with_the_adapters_merged(tmp_path):
    model, tok, wrapped = adapted()
    lora.save(wrapped, tmp_path)
    tok.save_pretrained(tmp_path)
    assert lora.is_adapter_dir(str(tmp_path)) and lora.adapter_base(str(tmp_path)) == "tiny"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"  # the base's config
    loaded, _ = load_model(str(tmp_path))
    assert not lora.lora_layers(loaded)  # a plain model: no adapter overhead when evaluating
    assert float((logits(loaded) - logits(model)).abs().max()) < 1e-5


def test_a_peft_adapter_without_a_tokenizer_loads_with_its_bases_and_a_damaged_one_is_named(tmp_path):
    model, _, wrapped = adapted()
    lora.save(wrapped, tmp_path)  # no tokenizer files, as most PEFT adapters
    loaded, tok = load_model(str(tmp_path))
    assert float((logits(loaded) - logits(model)).abs().max()) < 1e-5 and tok.pad_token_id is not None
    weights = tmp_path / lora.ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"adapter_model.safetensors is truncated"):
        load_model(str(tmp_path))


def test_a_lora_update_moves_only_the_adapters_and_adamw_keeps_state_for_them_alone(tiny):
    model, tok, _ = adapted()
    from opo.run import build_optimizer

    cfg = cfg_for(**{"optim.lr": 1e-2})
    optimizer = build_optimizer(model, cfg.optim)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    update(model, optimizer, cfg, step_data(model, tok))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n for n in moved)
    assert any(".lora_A." in n for n in moved) and any(".lora_B." in n for n in moved)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    assert sum(t.numel() for t in state) == 2 * lora.parameter_counts(model)["params/trainable"]


@pytest.mark.parametrize("advantage", ["opo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_every_estimator_trains_the_adapters_on_and_off_policy_with_a_kl_term(advantage):
    from opo.algos.advantages import ADVANTAGES
    from opo.run import build_optimizer

    model, tok, _ = adapted()
    data = step_data(model, tok)
    data.advantages = ADVANTAGES.get(advantage)(torch.rand(len(data.mask)), data.mask, data.group_index)
    cfg = cfg_for(**{"optim.lr": 1e-2, "algo.loss": "ppo_clip", "algo.mini_batches": 2, "algo.kl_coef": 0.1})
    reference = load_model("tiny", seed=0)[0].requires_grad_(False)  # the initial policy: the base
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = update(model, build_optimizer(model, cfg.optim), cfg, data, ref_model=reference,
                     generator=torch.Generator().manual_seed(0))
    assert metrics["optimizer_steps"] == 2 and metrics["kl_ref"] >= 0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n for n in moved)


def test_the_bf16_sampler_copy_follows_the_adapters_after_a_sync():
    model, tok, _ = adapted(randomize=False)
    engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id, "bf16", seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    engine.sync_weights()
    copied = dict(engine.model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(copied[name], p.to(torch.bfloat16)), name


def test_adapter_dropout_acts_in_gradient_passes_only():
    model, _, _ = adapted(dropout=0.5)
    model.train()
    assert torch.equal(logits(model), logits(model))  # sampling and scoring: the adapted policy itself
    with torch.enable_grad():
        a, b = model(input_ids=IDS).logits, model(input_ids=IDS).logits
    assert not torch.equal(a, b)


def test_an_adapter_on_the_output_layer_is_refused():
    with pytest.raises(ValueError, match="output layer"):
        adapted(target_modules=["lm_head"])


def test_lora_settings_are_checked_and_belong_to_opo_train():
    assert LoraSettings(rank=8).alpha_value == 16.0 and LoraSettings(rank=8, alpha=8).alpha_value == 8.0
    for key, value, message in (("model.lora.alpha", -1.0, "alpha must be > 0"),
                                ("model.lora.dropout", 1.0, "dropout must be < 1"),
                                ("model.lora.target_modules", ["all-linear", "q_proj"], "all-linear"),
                                ("model.lora.rank", -1, "rank must be >= 0")):
        cfg = Config()
        cfg.set("model.lora.rank", 4)
        cfg.set(key, value)
        with pytest.raises(ConfigError, match=message):
            cfg.validate()
    with pytest.raises(ConfigError, match="point model.path at it"):
        load_eval_config(None, ["model.lora.rank=4"])


TINY = ["model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "task.eval_size=6", "train.eval_max_new_tokens=6", "run.progress=false", "run.deterministic=true",
        "train.micro_batch_tokens=40", "optim.lr=1e-2", f"task.reward_fn={REWARD}:varied", "model.lora.rank=4",
        "checkpoint.every=1", "optim.warmup_steps=4"]


def opo(*args):
    proc = subprocess.run([sys.executable, "-m", "opo", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"opo {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.e2e
def test_lora_run_resumes_exactly_and_its_checkpoint_evaluates_as_its_merged_model(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    opo("train", *TINY, "train.steps=3", "checkpoint.keep=5", "model.lora.merged=true", f"run.dir={full}")
    opo("train", *TINY, "train.steps=2", "model.lora.merged=true", f"run.dir={part}")
    assert "continuing from" in opo("train", *TINY, "train.steps=3", "model.lora.merged=true",
                                    "checkpoint.resume=true", f"run.dir={part}").stdout
    ckpts = [full / "checkpoints" / f"step_000000{s}" for s in (1, 2, 3)]
    adapters = [load_file(c / lora.ADAPTER_WEIGHTS) for c in ckpts]
    assert not (ckpts[0] / "model.safetensors").exists()  # the adapter alone, not a copy of the base
    for before, after in zip(adapters, adapters[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before)  # every step moved the adapters
    resumed = load_file(part / "checkpoints" / "step_0000003" / lora.ADAPTER_WEIGHTS)
    assert [k for k in adapters[2] if not torch.equal(adapters[2][k], resumed[k])] == []
    summary = json.loads((full / "summary.json").read_text())
    assert 0 < summary["params/trainable"] < summary["params/total"]

    # the adapter checkpoint loads as the merged model written beside it, and opo eval takes it
    from_adapter, from_merged = (load_model(str(p))[0] for p in (ckpts[2], ckpts[2] / lora.MERGED_DIR))
    assert float((logits(from_adapter) - logits(from_merged)).abs().max()) < 1e-5
    assert float((logits(from_adapter) - logits(load_model("tiny", seed=0)[0])).abs().max()) > 1e-4
    out = tmp_path / "eval"
    opo("eval", f"model.path={ckpts[2]}", "task.eval_size=6", "max_new_tokens=6", "run.progress=false",
        f"run.dir={out}")
    assert json.loads((out / "summary.json").read_text())["metrics"]["eval/n"] == 6


@pytest.mark.e2e
def test_lora_under_torchrun_with_fsdp_trains_the_adapters_and_resumes_on_one_process(tmp_path):
    from test_distributed import ENV, _resume_dir, torchrun

    run = tmp_path / "sharded"
    res = subprocess.run(torchrun(2, "-m", "opo", "train", *TINY, "train.steps=2", "train.fsdp=true",
                                  "rollout.prompts_per_step=4", f"run.dir={run}"),
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (load_file(run / "checkpoints" / f"step_000000{s}" / lora.ADAPTER_WEIGHTS) for s in (1, 2))
    assert set(a) == set(b) and all(".lora_" in k for k in a) and any(not torch.equal(a[k], b[k]) for k in a)
    one = _resume_dir(tmp_path / "one", run / "checkpoints" / "step_0000001")
    opo("train", *TINY, "train.steps=2", "rollout.prompts_per_step=4", "train.fsdp=true", "checkpoint.resume=true",
        f"run.dir={one}")
    assert (one / "checkpoints" / "step_0000002" / lora.ADAPTER_WEIGHTS).is_file()
