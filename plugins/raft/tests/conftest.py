"""Makes ``cluster_support`` (the real-cluster harness) importable by this plugin's tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
