"""Ray helpers shared by the tests that fill the session's Ray instance on purpose."""

from __future__ import annotations

import time

import ray


@ray.remote
class CpuHolder:
    """Holds the CPUs it was created with (``.options(num_cpus=...)``) while it lives."""

    def ready(self) -> bool:
        return True


def free_cpus(settle_s: float = 10.0) -> float:
    """The CPUs free now, once the resource view stopped changing (killed actors release theirs
    a moment after ``ray.kill``)."""
    deadline = time.monotonic() + settle_s
    last = ray.available_resources().get("CPU", 0.0)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = ray.available_resources().get("CPU", 0.0)
        if now == last:
            break
        last = now
    return float(last)
