"""A process that builds an encoder keeps its freed activations: repeated calls stop faulting.

Each case runs in a fresh interpreter, since the malloc settings are process-wide and stay.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from zoommil import heap

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Minor page faults per call of the ResNet-50-layer3 encoder (2 patches of 256 px, 1 thread),
# the median of 7 calls after 3 warm-up calls (a call may still grow the heap once). "default"
# runs the module with glibc's own settings, "encoder" goes through a PatchEncoder, which keeps
# freed memory.
SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    from zoommil.features.encoder import PatchEncoder, build_encoder
    from zoommil import heap

    torch.set_num_threads(1)
    model = build_encoder("random", seed=0)[0]
    patches = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    if sys.argv[1] == "encoder":
        encoder = PatchEncoder(model, frozen=False)
        call = lambda: encoder.encode(patches)
    else:
        x = torch.rand(2, 3, 256, 256)
        call = lambda: model(x)

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    with torch.inference_mode():
        for _ in range(3):
            call()
        per_call = []
        for _ in range(7):
            before = faults()
            call()
            per_call.append(faults() - before)
    print(json.dumps({"per_call": sorted(per_call)[3], "kept": heap._done}))
    """
)


def _faults_per_call(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_encoder_process_stops_faulting_its_activations_in():
    default = _faults_per_call("default")
    if default["per_call"] < 1000:
        pytest.skip(f"this glibc/torch faults only {default['per_call']:.0f} times per call")
    assert not default["kept"]
    kept = _faults_per_call("encoder")
    assert kept["kept"]
    # 2,500-16,000 faults per call (10-64 MB) with glibc's settings here, 0 kept
    assert kept["per_call"] < 0.1 * default["per_call"]


def test_keep_freed_memory_sets_both_thresholds_once_and_only_on_glibc(monkeypatch):
    """The mmap threshold goes first (setting it stops glibc's own adjusting of both), each
    process sets them once, and off glibc nothing is called. A fake libc: this test process
    keeps its own malloc settings."""
    calls = []

    class FakeMallopt:
        def __call__(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    class FakeLibc:
        def __init__(self, name: str) -> None:
            self.mallopt = FakeMallopt()

    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setattr(heap.ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(heap.platform, "system", lambda: "Darwin")
    assert heap.keep_freed_memory() is False
    assert calls == []
    monkeypatch.setattr(heap.platform, "system", lambda: "Linux")
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("musl", ""))
    assert heap.keep_freed_memory() is False
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert heap.keep_freed_memory() is True
    assert calls == [(heap.M_MMAP_THRESHOLD, 32 << 20), (heap.M_TRIM_THRESHOLD, 512 << 20)]
    assert heap.keep_freed_memory() is True
    assert len(calls) == 2
