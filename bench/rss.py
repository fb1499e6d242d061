"""Peak resident memory of a process tree, sampled in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


class PeakRSS:
    """Samples the RSS of ``pid`` and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self._sample()

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stage(results: dict, name: str, sampler: PeakRSS) -> Iterator[None]:
    """Record wall seconds and peak RSS (GB) of the block under ``name``."""
    sampler.reset()
    started = time.perf_counter()
    yield
    results[name] = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_gb": round(sampler.peak / 1e9, 2),
    }
