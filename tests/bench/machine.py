"""The machine a benchmark ran on, in one line: figures mean little without it."""

from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    """The CPU's model name, as Linux reports it (else the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """``CPU model, N cores, Linux release, CPython version, date``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu_model()}, {cores} cores, {platform.system()} {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}"
    )
