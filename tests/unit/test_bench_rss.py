"""The benchmark's peak-RSS sampler counts a process tree's memory once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from bench.rss import PeakRSS

MB = 1_000_000


def test_a_child_with_its_own_memory_is_counted() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; b = bytearray(300_000_000); time.sleep(3)"]
    )
    try:
        base = PeakRSS(os.getpid())._sample()
        time.sleep(1.5)  # the child has allocated
        with PeakRSS(os.getpid(), interval=0.02) as sampler:
            time.sleep(0.3)
        assert sampler.peak > base + 250 * MB, (base / MB, sampler.peak / MB)
    finally:
        child.kill()
        child.wait()


def test_spawning_programs_does_not_double_the_peak() -> None:
    """subprocess's vfork child reports its parent's RSS until it execs."""
    held = np.ones(300 * MB // 8)
    base = PeakRSS(os.getpid())._sample()
    with PeakRSS(os.getpid(), interval=0.0) as sampler:
        for _ in range(200):
            subprocess.run(["true"], check=True)
    assert held.sum() > 0
    assert sampler.peak < base + 100 * MB, (base / MB, sampler.peak / MB)
