"""Makes ``cluster_support`` (the real-cluster harness) importable by this plugin's tests,
and shows the nodes' logs when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

#: How much of each node's ``serve.log`` a failing test shows (its last characters).
LOG_TAIL = 6000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """A failing cluster test shows the end of every node's ``serve.log``: the nodes'
    side of a timeout is otherwise lost with pytest's temporary directories."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and tmp_path is not None:
        for log in sorted(Path(tmp_path).glob("**/serve.log")):
            text = log.read_text(errors="replace")[-LOG_TAIL:]
            report.sections.append((f"{log.parent.name}/serve.log (last lines)", text))
