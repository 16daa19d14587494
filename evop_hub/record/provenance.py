"""Where and with what a number was measured: hardware and package versions, for reports and benchmarks."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import torch

from .._version import __version__  # this checkout's, installed or not

PACKAGES = ("torch", "transformers", "accelerate", "lm-eval", "sentence-transformers")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.is_file() else None
    return found.group(1).strip() if found else platform.processor() or platform.machine()


def hardware() -> str:
    """CPU model and cores, torch threads, GPU when present, and the load average at the time."""
    text = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text + f", load average {os.getloadavg()[0]:.1f}"


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a result depends on (absent ones left out)."""
    found = {"python": sys.version.split()[0], "evop-hub": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
