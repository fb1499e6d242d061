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
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        seen: dict[int, tuple[int, list[str], int]] = {}  # pid -> (parent pid, command, RSS)
        for process in processes:
            try:
                # the command before the RSS: a child caught before its exec must not be
                # judged by the program it runs a moment later
                command = process.cmdline()
                seen[process.pid] = (process.ppid(), command, process.memory_info().rss)
            except psutil.Error:
                continue
        return sum(rss for pid, (_, _, rss) in seen.items() if not _shares_parent(pid, seen))

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


def _shares_parent(pid: int, seen: dict[int, tuple[int, list[str], int]]) -> bool:
    """Is ``pid`` a child still running its parent's program in its parent's memory?

    subprocess starts a program with vfork: until the exec, the child *is* the parent's
    address space, and /proc reports the parent's RSS for it. A sample in that instant (a
    retrain runs ``git`` and ``uname`` for MLflow's run tags) counted a 1.8 GB process twice.
    A forked worker is still counted whole, its copy-on-write pages included: an
    overestimate, as before."""
    parent, command, rss = seen[pid]
    if parent not in seen or not rss:
        return False
    _, parent_command, parent_rss = seen[parent]
    # the same address space: the same RSS, up to the moment between the two readings
    return command == parent_command and abs(rss - parent_rss) <= 0.05 * parent_rss


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
