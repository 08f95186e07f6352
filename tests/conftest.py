import signal

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


@pytest.fixture
def default_sigint():
    """A ``preexec_fn`` for a child that a test interrupts with SIGINT. A suite started in the
    background inherits SIGINT ignored (shells start background jobs so), and Python keeps an
    ignored SIGINT ignored: this gives the child the terminal's default back."""
    return lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
