"""How `make test` spreads the suite over its pytest-xdist workers (used by tests/conftest.py's
scheduler hook): the groups a worker runs whole, their measured costs, and the order they go out.
"""

import json
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]

CUDA_COMPILE_TESTS = ("tests/ops/test_cuda_compile.py", "tests/ops/test_deform_cuda_compile.py")


def worker_group(nodeid: str) -> str:
    """The unit of work one pytest-xdist worker runs whole (``make test``: ``--dist loadscope``
    with this split): a test file, so its module fixtures are built once; all of tests/export/,
    whose files share the session-scoped export of the tiny model (tests/export/conftest.py);
    and the two CUDA compile test files, which share one nvcc object (tests/ops/conftest.py)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/export/"):
        return "tests/export"
    if path in CUDA_COMPILE_TESTS:
        return "cuda-compile"
    return path


# Measured seconds per worker_group (setup + call + teardown of its tests, one worker), read by
# tests/conftest.py's scheduler. Refresh after adding slow tests:
# `make test ARGS=--store-group-costs`.
GROUP_COSTS_FILE = TESTS_DIR / "group_costs.json"
# The estimate for a group the file does not list: its tests times about the median test's cost.
SECONDS_PER_UNLISTED_TEST = 0.5


def load_group_costs() -> dict[str, float]:
    try:
        return json.loads(GROUP_COSTS_FILE.read_text())["seconds"]
    except FileNotFoundError:
        return {}


def longest_first(groups: dict[str, dict], costs: dict[str, float]) -> list[str]:
    """Group names, most expensive first (the longest-processing-time rule: no long group is
    left for the end, where one worker would run it while the other idles). ``groups`` maps a
    group to its tests; a group ``costs`` does not list is estimated from its test count."""

    def cost(name):
        return costs.get(name, len(groups[name]) * SECONDS_PER_UNLISTED_TEST)

    return sorted(groups, key=lambda name: (-cost(name), name))


def save_group_costs(measured: dict[str, float]) -> None:
    """Writes ``measured`` (seconds per group) into the costs file, merged into its entries: a
    run of some groups only updates those."""
    merged = {**load_group_costs(), **{k: round(v, 1) for k, v in measured.items()}}
    document = {
        "about": "seconds per worker group, tests/helpers/scheduling.py",
        "seconds": dict(sorted(merged.items())),
    }
    GROUP_COSTS_FILE.write_text(json.dumps(document, indent=1) + "\n")
