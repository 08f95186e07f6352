import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from opo.models import load_model


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vllm`` run where vLLM is installed (.venv-vllm, the README's test command runs
    them there); elsewhere they are deselected with a note, not skipped one by one."""
    if _vllm_installed():
        return
    kept = [i for i in items if "vllm" not in i.keywords]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if "vllm" in i.keywords])
        items[:] = kept


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


def _sigterm_after_rows(args: list[str], metrics: Path, limit: int) -> int:
    """Start ``args`` (an opo command), send SIGTERM once it has logged two rows, check the clean
    stop (exit 143, no traceback) and return the step it stopped after (< ``limit``)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = int(out.split("SIGTERM: stopped after step ")[1].split()[0])
    assert "Traceback" not in err and 2 <= stopped < limit
    return stopped


@pytest.fixture
def sigterm_after_rows():
    """:func:`_sigterm_after_rows`: stop an opo command with SIGTERM mid-run."""
    return _sigterm_after_rows
