import platform

import pytest
import torch

from opo.runtime import reuse_large_allocations


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")
def test_allocator_tuning_applies_and_memory_still_works():
    assert reuse_large_allocations()
    for _ in range(3):  # large blocks are now served from the heap and reused
        x = torch.ones(2**24)  # 64 MB
        assert float(x.sum()) == 2**24
        del x


def test_auto_precision_follows_native_bf16_and_explicit_values_pass_through():
    from opo.runtime import native_bf16, resolve_precision

    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_pick_threads_sets_the_count_it_returns():
    from opo.runtime import pick_threads

    before = torch.get_num_threads()
    try:
        assert pick_threads(1) == 1 and torch.get_num_threads() == 1
        chosen = pick_threads(0, reps=2)
        assert chosen >= 1 and torch.get_num_threads() == chosen
    finally:
        torch.set_num_threads(before)


def test_choose_compute_resolves_auto_and_keeps_explicit_choices():
    from opo.config import load_config
    from opo.run import choose_compute
    from opo.runtime import resolve_precision

    before = torch.get_num_threads()
    try:
        cfg = load_config(None, ["run.threads=1"])
        compute = choose_compute(cfg.run, cfg.rollout.precision)
        assert "1 thread" in compute.describe()
        assert compute.precision == compute.sampling == resolve_precision("auto")
        assert cfg.run.precision == "auto"  # the config keeps what the user asked for
        cfg = load_config(None, ["run.deterministic=true"])
        assert choose_compute(cfg.run).threads == 1  # no timed choice
        cfg = load_config(None, ["run.threads=1", "run.precision=bf16"])
        assert choose_compute(cfg.run, cfg.rollout.precision).sampling == "bf16"  # auto sampling follows training
        cfg = load_config(None, ["run.threads=1", "run.precision=bf16", "rollout.precision=fp32"])
        c = choose_compute(cfg.run, cfg.rollout.precision)
        assert (c.precision, c.sampling) == ("bf16", "fp32")
    finally:
        torch.set_num_threads(before)
