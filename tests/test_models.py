"""Model loading refuses what could run code: pickle weights always, repository code unless allowed."""

import json

import pytest
import torch
from safetensors.torch import save_file

from opo.config import ModelConfig
from opo.models import load_model


@pytest.fixture
def saved_tiny(tiny, tmp_path):
    """A tiny model directory with config and tokenizer but no weights yet."""
    model, tok = tiny
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model, tmp_path


def test_pickle_weights_are_refused_saying_why(saved_tiny):
    model, d = saved_tiny
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # what save_pretrained(safe_serialization=False) wrote
    with pytest.raises(ValueError, match=r"only pickle weights.*execute arbitrary code"):
        load_model(str(d))


def test_safetensors_weights_load(saved_tiny):
    model, d = saved_tiny
    # tied embeddings: safetensors refuses shared storage, so the output layer is saved as its own copy
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors",
              metadata={"format": "pt"})
    loaded, _ = load_model(str(d))
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_repository_code_runs_only_when_allowed(saved_tiny):
    _, d = saved_tiny
    marker = d / "code_ran"
    (d / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((d / "config.json").read_text())
    del config["model_type"]  # a model type transformers does not know: only the repository's code could load it
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (d / "config.json").write_text(json.dumps(config))
    assert ModelConfig().trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(d))
    assert not marker.exists()


def test_generation_stops_on_every_eos_id_the_model_declares(tiny):
    import copy

    from opo.models import stop_token_ids
    from opo.rollout.hf import HFEngine

    model, tok = copy.deepcopy(tiny[0]), tiny[1]  # the fixture is shared: change a copy
    first = HFEngine(model, [tok.eos_token_id], tok.pad_token_id).generate([[1, 5]], [0], 1, 4, 0.0).rollouts[0]
    assert first.finish == "length" and first.completion[0] != tok.eos_token_id
    # an instruct model's generation config lists a second end token, e.g. <|im_end|> and <|endoftext|>
    model.generation_config.eos_token_id = [tok.eos_token_id, first.completion[0]]
    stops = stop_token_ids(model, tok)
    assert set(stops) == {tok.eos_token_id, first.completion[0]}
    again = HFEngine(model, stops, tok.pad_token_id).generate([[1, 5]], [0], 1, 4, 0.0).rollouts[0]
    assert again.completion == first.completion[:1] and again.finish == "stop"


# Issue 15: every failure to load names the path and the cause in one line (a ValueError).


def _saved_model(model, tok, d):
    """A complete model directory as save_pretrained writes it."""
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _one_line_error(path, match):
    with pytest.raises(ValueError, match=match) as err:
        load_model(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_and_empty_directories_are_named(tmp_path):
    _one_line_error(tmp_path / "nope", "no such file or directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "is an empty directory")


def test_a_run_directory_names_its_newest_checkpoint(tiny, tmp_path):
    from opo import checkpoint

    model, tok = tiny
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint.save(run / "checkpoints", step, model, tok, {"step": step}, {}, keep=3)
    newest = run / "checkpoints" / "step_0000004"
    message = _one_line_error(run, "is an opo run directory, not a model: load its newest checkpoint")
    assert message.endswith(f"model.path={newest}")
    loaded, _ = load_model(str(newest))  # what the message says works
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_config_json_that_is_not_json_is_named(tiny, tmp_path):
    d = _saved_model(*tiny, tmp_path / "m")
    (d / "config.json").write_text('{"model_type": "llama",')
    _one_line_error(d, r"config.json is not valid JSON \(line 1 column")


@pytest.mark.parametrize("key,value,match", [
    ("hidden_size", 128, r"config.json does not match the weights' shapes: .* is \[.*\] in the weights but"),
    ("num_hidden_layers", 3, r"config.json does not match the weights: 9 tensors missing from the weights"),
    ("num_hidden_layers", 1, r"config.json does not match the weights: 9 tensors in the weights but not in the model"),
])
def test_a_config_json_that_does_not_describe_the_weights_is_an_error_not_random_weights(tiny, tmp_path, key, value,
                                                                                         match):
    d = _saved_model(*tiny, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config[key] = value
    (d / "config.json").write_text(json.dumps(config))
    _one_line_error(d, match)


def test_truncated_weights_are_named(tiny, tmp_path):
    d = _saved_model(*tiny, tmp_path / "m")
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short
    _one_line_error(d, rf"model.safetensors is truncated \({len(data) // 2} of {len(data)} bytes\)")


def test_a_gguf_file_is_refused_saying_how_to_convert_it():
    from opo.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    _one_line_error(gguf, r"is a GGUF file, which opo reads only for its embedded model \(model.path=embedded\); "
                          "convert it")


def test_a_hub_id_without_network_fails_in_seconds():
    import time

    from huggingface_hub import constants

    started = time.monotonic()
    with pytest.raises(Exception) as err:
        load_model("opo-test-nobody/no-such-model")
    assert time.monotonic() - started < 20  # not a minute of retries
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert str(err.value).startswith("model.path 'opo-test-nobody/no-such-model'")
    from opo.models import hub_reachable

    if not hub_reachable(constants.ENDPOINT):  # this sandbox: no network to the hub
        assert "not found locally" in str(err.value) and "no network" in str(err.value)


def test_two_processes_converting_the_embedded_model_at_once_both_get_it(tmp_path, monkeypatch):
    """Two runs started together (a sweep, claims.sh's lanes) both convert on first use; the one that
    finishes second finds the other's copy in place and must use it, not fail on os.replace."""
    import opo.models as models

    monkeypatch.setenv("OPO_CACHE", str(tmp_path))
    target = tmp_path / "models" / models.EMBEDDED_NAME
    convert = models._drop_quantization

    def other_process_finishes_first(model):
        convert(model)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")  # the other process's complete copy

    monkeypatch.setattr(models, "_drop_quantization", other_process_finishes_first)
    assert models.embedded_model_dir() == target
    assert [p.name for p in target.parent.iterdir()] == [models.EMBEDDED_NAME]  # our half is cleaned up
    assert (target / "config.json").read_text() == "{}"  # the other copy is kept whole
