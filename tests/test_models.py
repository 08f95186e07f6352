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
