"""Devices (docs/gpu.md), checked on the CPU: device and precision choice, the process group's
backend, batches following the model's device, and activation checkpointing's gradients."""

import copy

import pytest
import torch

from opo.logprobs import PromptBatch, completion_logprobs
from opo.runtime import resolve_device, resolve_precision, resolve_precisions, torch_device


def test_auto_device_is_the_cpu_without_a_gpu_and_cuda_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"  # asked for, kept: a GPU is not forced on anyone


def test_cuda_without_a_gpu_is_an_error_naming_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="model.device=cuda"):
        resolve_device("cuda")


def test_on_this_cpu_build_auto_is_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert resolve_device("auto") == "cpu"


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torch_device("cuda") == torch.device("cuda", 0) and torch_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert torch_device("cuda") == torch.device("cuda", 3)


def test_auto_precision_on_a_gpu_is_bf16_where_it_computes_bf16_else_fp32(monkeypatch):
    assert resolve_precision("auto", "cuda", bf16=True) == "bf16"
    assert resolve_precision("auto", "cuda", bf16=False) == "fp32"
    assert resolve_precision("fp32", "cuda", bf16=True) == "fp32"  # asked for, kept
    assert resolve_precision("bf16", "cuda", bf16=False) == "bf16"
    for supported in (True, False):  # without an answer given, the GPU is asked
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert resolve_precisions("auto", "auto", "cuda") == (("bf16",) * 2 if supported else ("fp32",) * 2)
        assert resolve_precisions("auto", "fp32", "cuda") == ("bf16" if supported else "fp32", "fp32")


def test_auto_precision_on_the_cpu_is_unchanged(monkeypatch):
    from opo.runtime import native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # a GPU's answer must not matter here
    assert resolve_precision("auto") == resolve_precision("auto", "cpu") == ("bf16" if native_bf16() else "fp32")


def test_the_process_group_runs_on_nccl_for_gpus_and_gloo_for_cpus():
    from opo.distributed import backend_for

    assert backend_for("cuda") == "nccl" and backend_for("cpu") == "gloo"


def test_collective_tensors_live_on_the_processes_device(monkeypatch):
    from opo.distributed import Dist

    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Dist(0, 2, device="cuda")._comm == torch.device("cuda", 1)
    assert Dist(0, 2)._comm == torch.device("cpu")


def test_compute_names_the_gpu_and_keeps_the_cpu_line():
    from opo.run import Compute

    cpu = Compute("fp32", "fp32", 2)
    assert cpu.describe() == "compute: fp32 training, fp32 sampling, 2 threads"
    gpu = Compute("bf16", "bf16", 2, "cuda", "NVIDIA H100 80GB HBM3")
    assert gpu.describe().startswith("compute: cuda (NVIDIA H100 80GB HBM3) bf16 training, bf16 sampling")


def test_autocast_context_follows_the_device_type():
    from opo.update import autocast_context

    with autocast_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_context("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.warns(UserWarning, match="CUDA is not available"):  # a CPU build: built, never entered
        gpu = autocast_context("bf16", "cuda")
    assert isinstance(gpu, torch.autocast) and gpu.device == "cuda" and gpu.fast_dtype == torch.bfloat16


def test_batches_move_to_the_models_device_at_one_boundary(tiny):
    """On the CPU the move is the identity (the same tensors); on a GPU every tensor follows it,
    checked here with the meta device, which holds shapes only."""
    from opo.rollout.base import Rollout, RolloutBatch
    from opo.update import StepData

    rollouts = RolloutBatch([Rollout([1, 2, 3], [4, 5], [-0.1, -0.2], "stop", 0),
                             Rollout([1, 2, 3], [6], [-0.3], "length", 0)])
    data = StepData.from_rollouts(rollouts, torch.zeros(2, 2), tiny[1].pad_token_id)
    same = data.to(torch.device("cpu"))
    assert all(getattr(same, f) is getattr(data, f) for f in ("group_index", "completions", "mask", "advantages"))
    meta = data.to(torch.device("meta"))
    tensors = [meta.group_index, meta.completions, meta.mask, meta.sampler_logp, meta.advantages]
    assert all(t.device.type == "meta" for t in tensors) and meta.prompts == data.prompts
    pb = PromptBatch.from_lists(data.prompts, 0).to(torch.device("meta"))
    assert {t.device.type for t in (pb.ids, pb.mask, pb.positions, pb.lengths)} == {"meta"}


def _batch(tok):
    prompts = [[tok.bos_token_id or 1, 5, 6, 7, 8], [9, 10, 11]]
    completions = torch.tensor([[20, 21, 22, 2], [23, 2, 0, 0], [24, 25, 26, 27], [28, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).float()
    return PromptBatch.from_lists(prompts, tok.pad_token_id), completions, mask, torch.tensor([0, 0, 1, 1])


def _grads(model, tok):
    """Log-probs ``(N, T)`` and every parameter's gradient of a weighted sum of them."""
    pb, completions, mask, gi = _batch(tok)
    model.zero_grad()
    logp, _ = completion_logprobs(model, pb, completions, mask, gi, bucket_tokens=8)  # two buckets
    (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_keeps_log_probs_and_gradients(tiny):
    """Through the shared prompt cache too: the completions attend to a prompt pass whose layers
    are replayed in backward."""
    from opo.models import enable_activation_checkpointing

    model, tok = copy.deepcopy(tiny[0]).train(), tiny[1]
    logp, grads = _grads(model, tok)
    enable_activation_checkpointing(model)
    calls = []
    model.get_decoder().layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    logp_ckpt, grads_ckpt = _grads(model, tok)
    assert len(calls) == 2 * 3  # prompts, two buckets; each replayed once in backward
    assert torch.allclose(logp_ckpt, logp, atol=1e-6, rtol=0)
    for n, g in grads.items():
        assert torch.allclose(grads_ckpt[n], g, atol=1e-6 * float(g.abs().max()), rtol=0), n


def test_activation_checkpointing_leaves_passes_without_gradient_alone(tiny):
    from opo.models import enable_activation_checkpointing

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    enable_activation_checkpointing(model)
    sampler = copy.deepcopy(model)  # the bf16 sampler's copy: its layers run their own weights
    assert sampler.get_decoder().layers[0].forward.__self__ is sampler.get_decoder().layers[0]
    pb, completions, mask, gi = _batch(tok)
    with torch.no_grad():
        a, _ = completion_logprobs(model, pb, completions, mask, gi)
        b, _ = completion_logprobs(sampler, pb, completions, mask, gi)
    assert torch.equal(a, b)


@pytest.mark.parametrize("overrides", [{}, {"algo.ppo_epochs": 2, "algo.loss": "ppo_clip", "algo.entropy_coef": 0.01}])
def test_a_training_step_with_activation_checkpointing_takes_the_same_step(tiny, overrides):
    from opo.models import enable_activation_checkpointing
    from test_update import cfg_for, sgd_delta, step_data

    model, tok = tiny
    cfg = cfg_for(**{"train.micro_batch_tokens": 16, **overrides})  # several micro-batches
    data = step_data(model, tok)
    torch.manual_seed(1)  # off-policy, the mini-batch order is drawn: the same in both runs
    plain, m_plain = sgd_delta(model, cfg, data)
    checkpointed = copy.deepcopy(model)
    enable_activation_checkpointing(checkpointed)
    torch.manual_seed(1)
    delta, m = sgd_delta(checkpointed, cfg, data)
    assert m["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=1e-5) and m["micro_batches"] > 1
    for n, d in plain.items():
        assert torch.allclose(delta[n], d, atol=1e-6 * float(d.abs().max()), rtol=0), n
