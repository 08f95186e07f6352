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
