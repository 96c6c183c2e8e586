"""What this machine has: memory available to a new allocation (torch-free, for the guards that refuse work that
cannot fit before it starts)."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of memory available without swapping (Linux's MemAvailable), or None where it cannot be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return None
