import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
ZOO = sorted(p for p in SPECS.glob("*.spec"))

# Tests that run torch share two cores with pytest itself: keep torch to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def specc_cmd():
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).parent / "specc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "specdsl.cli"]
