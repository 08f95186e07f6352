"""LoRA adapters through PEFT (``model.lora``): train low-rank updates, keep the base weights frozen.

A LoRA layer computes W x + (alpha / r) B A x, with A (r x in) random and B (out x r) zero at the
start, so the adapted policy starts as the base policy (Hu et al. 2021, arXiv 2106.09685, Sec. 4.1).
PEFT injects the layers into the model in place: the transformers model opo already holds *is*
the adapted policy, so opo's sampler, trainer and diagnostics run on it unchanged. The output
layer and the embeddings stay plain (opo reads the output layer's weight directly), which is what
PEFT's ``all-linear`` selects.

A LoRA checkpoint holds the adapter in PEFT's format (``adapter_model.safetensors`` and
``adapter_config.json``, loadable by ``PeftModel.from_pretrained``) beside the base model's
``config.json``; with ``model.lora.merged`` also a complete merged model in ``merged/``.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from safetensors import SafetensorError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_DIR = "merged"


def is_adapter_dir(path: str) -> bool:
    """Whether ``path`` is a directory holding a PEFT adapter (an opo LoRA checkpoint)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base(path: str) -> str:
    """The base model an adapter directory was trained on (its ``base_model_name_or_path``)."""
    config = Path(path).expanduser() / ADAPTER_CONFIG
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"model.path '{path}': cannot read {config} ({e})") from None
    if not base:
        raise ValueError(f"model.path '{path}': {config} names no base model (base_model_name_or_path); load the "
                         "base model and the adapter with PEFT, or set the base's path there")
    return str(base)


def base_path(path: str) -> str:
    """How an adapter names its base (``model.path``): an existing local directory as an absolute
    path, so the adapter loads from any working directory; ``embedded``, ``tiny`` and hub ids as they are."""
    local = Path(path).expanduser()
    return str(local.resolve()) if path not in ("embedded", "tiny") and local.exists() else path


@contextmanager
def _quiet() -> Iterator[None]:
    # PEFT asks transformers a deprecated question (is_gradient_checkpointing) on every wrap
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_adapters(model: torch.nn.Module, settings: Any, base: str) -> Any:
    """Inject fresh LoRA layers (``settings``: :class:`opo.config.LoraSettings`) into ``model`` in
    place and freeze every other weight; returns the PEFT wrapper (used to save the adapter).
    A is drawn from torch's global generator (seeded by run.seed), B starts at zero; ``base``: how
    the adapter names its base model (:func:`base_path`)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha_value, lora_dropout=settings.dropout,
                        target_modules=_targets(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    with _quiet():
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as e:  # PEFT: no module matched the target names
            raise ValueError(f"model.lora.target_modules={settings.target_modules}: {e}") from None
    wrapped.peft_config["default"].base_model_name_or_path = base  # PEFT records the model's own name
    _check_plain_head(model, settings.target_modules)
    _dropout_in_gradient_passes(model)
    return wrapped


def load_adapters(model: torch.nn.Module, path: str, trainable: bool) -> Any:
    """The adapter saved in ``path`` injected into ``model`` (its base); returns the PEFT wrapper."""
    from peft import PeftModel

    with _quiet():
        try:
            wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ValueError(f"model.path '{path}': cannot load the LoRA adapter onto its base model: {first}") \
                from None
    if trainable:  # merged at once otherwise: a merged head is a plain one
        _check_plain_head(model, wrapped.peft_config["default"].target_modules)
        _dropout_in_gradient_passes(model)
    return wrapped


def _targets(names: list) -> Any:
    return "all-linear" if list(names) == ["all-linear"] else list(names)


def _check_plain_head(model: torch.nn.Module, targets: Any) -> None:
    """Refuse adapters on the embeddings or the output layer: opo computes logits from the output
    layer's ``weight`` (tied to the embeddings in many models), which would skip them silently."""
    from peft.tuners.lora import LoraLayer

    for what, layer in (("output layer", model.get_output_embeddings()), ("input embeddings",
                                                                          model.get_input_embeddings())):
        if isinstance(layer, LoraLayer):
            raise ValueError(f"model.lora.target_modules={targets} puts an adapter on the {what}; opo adapts the "
                             "decoder's linear layers only: leave it out (the default all-linear does)")


class GradientPassDropout(torch.nn.Dropout):
    """Dropout in passes with gradient only: the sampler and the log-prob passes without gradient
    compute the adapted policy itself, whatever the module's train/eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, self.p, training=torch.is_grad_enabled(), inplace=self.inplace)


def _dropout_in_gradient_passes(model: torch.nn.Module) -> None:
    for layer in lora_layers(model).values():
        for adapter, dropout in list(layer.lora_dropout.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                layer.lora_dropout[adapter] = GradientPassDropout(dropout.p)


def lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """The LoRA layers of ``model`` by module name (empty for a plain model)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_parameters(named: Iterable[tuple[str, torch.Tensor]], layers: dict[str, Any]
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged model's parameters under the plain model's names, from the adapted model's
    ``named`` (full) tensors and its LoRA ``layers`` (:func:`lora_layers`): W + (alpha / r) B A for
    each adapted layer, every other tensor as it is (with no layers: ``named`` unchanged)."""
    weights = dict(named)
    for name, value in weights.items():
        module, _, leaf = name.rpartition(".")
        owner = module.removesuffix(".base_layer")
        if ".lora_" in f".{name}":
            continue
        if owner == module or owner not in layers:
            yield name, value
            continue
        if leaf == "weight":
            layer = layers[owner]
            for adapter in layer.active_adapters:
                a, b = weights[f"{owner}.lora_A.{adapter}.weight"], weights[f"{owner}.lora_B.{adapter}.weight"]
                delta = b.float() @ a.float()  # (out, r) @ (r, in) -> (out, in)
                value = value + ((delta.T if layer.fan_in_fan_out else delta) * layer.scaling[adapter]).to(value.dtype)
        yield f"{owner}.{leaf}", value


def save(wrapped: Any, out: Path, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write the adapter in PEFT's format and the base model's config.json into ``out``;
    ``weights``: the adapted model's full state dict where its own is sharded."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = None if weights is None else {f"base_model.model.{k}": v for k, v in weights.items()}
    adapter = get_peft_model_state_dict(wrapped, state_dict=state, save_embedding_layers=False)
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    wrapped.peft_config["default"].save_pretrained(str(out))
    wrapped.base_model.model.config.save_pretrained(str(out))  # the base's: checkpoint checks and tools read it


def save_merged(model: torch.nn.Module, tokenizer: Any, out: Path,
                weights: Optional[dict[str, torch.Tensor]] = None) -> None:
    """A complete model with the adapters merged into its weights, loadable anywhere, in ``out``;
    ``weights``: the adapted model's full state dict where its own is sharded."""
    named = (weights if weights is not None else model.state_dict()).items()  # buffers included
    model.save_pretrained(out, state_dict=dict(merged_parameters(named, lora_layers(model))))
    tokenizer.save_pretrained(out)


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameters (counted once each), for the run's summary."""
    seen = {id(p): p for p in model.parameters()}.values()
    return {"params/trainable": float(sum(p.numel() for p in seen if p.requires_grad)),
            "params/total": float(sum(p.numel() for p in seen))}
