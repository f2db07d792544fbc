"""pipeline.allocator: after retain_freed_memory, the large tensors of a repeated step reuse mapped
pages (no page faults), where glibc's defaults fault every page in again on every step. Each case runs in
a fresh interpreter: the setting is process-wide and cannot be undone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.allocator import _glibc

PROBE = """
import resource, sys, torch
from pipeline.allocator import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "retain" else None
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.empty(n * 2**20).fill_(1.0) for n in (16, 4, 12, 2)]  # 64, 16, 48 and 8 MB, written
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
steps = [faults_of_a_step() for _ in range(8)]
print(took, sum(steps[-3:]))  # the first steps grow the heap; by the sixth it is reused
"""


def _probe(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          check=True)
    took, faults = done.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only")
def test_freed_memory_is_reused_without_page_faults_after_retain():
    _, default_faults = _probe("default")
    took, retained_faults = _probe("retain")
    assert took == "True"
    # 3 x 136 MB: about 100,000 faults in 4 KB pages (about 200 in huge pages), against none once retained
    assert default_faults > 10 * max(retained_faults, 1)


def test_outside_glibc_nothing_is_changed(monkeypatch):
    import pipeline.allocator as allocator

    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.retain_freed_memory() is False
