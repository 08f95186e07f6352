import pytest
import torch

from opo.models import load_model


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): a random 2-layer Llama with the embedded model's tokenizer, fp32."""
    model, tok = load_model("tiny", seed=0)
    return model, tok


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
