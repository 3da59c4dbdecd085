"""Root of the test suite.

pytest puts this folder (tests/, which has no __init__.py) on sys.path for its conftest, so every
test imports the shared helpers as ``helpers.<module>`` (tests/helpers/) without path edits. The
same folder goes on PYTHONPATH here, so Python subprocesses that tests start (workers, scripts
run with ``-c``) import them too.
"""

import os
from collections import defaultdict

import pytest
from helpers.scheduling import (
    GROUP_COSTS_FILE,
    load_group_costs,
    longest_first,
    save_group_costs,
    worker_group,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p
)


def pytest_addoption(parser):
    parser.addoption(
        "--store-group-costs",
        action="store_true",
        help=f"write the measured seconds of each worker group to {GROUP_COSTS_FILE.name} "
        "(the order in which `make test` hands groups to its workers)",
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` over ``worker_group`` (xdist's own scopes are modules and classes).

    Groups are handed out most expensive first by their measured cost (``longest_first``;
    xdist's own order is by test count, which put the few-but-long files such as the learning
    and CUDA compile tests last). (xdist 3.8's ``loadgroup`` does not group under pytest 9: it
    renames ``item._nodeid``, which pytest 9 no longer reads, so every test was scheduled alone
    and fixtures were built on both workers.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    costs = load_group_costs()

    class GroupScheduling(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

        def _assign_work_unit(self, node):
            # The first call comes after schedule() has filled the queue and before any unit
            # has left it: order the queue once, there.
            if not self.ordered:
                order = longest_first(self.workqueue, costs)
                units = {name: self.workqueue[name] for name in order}
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)


_measured_costs: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Sums each group's setup, call and teardown times (on the controller when run with -n)."""
    _measured_costs[worker_group(report.nodeid)] += report.duration


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("store_group_costs") or hasattr(config, "workerinput"):
        return
    save_group_costs(_measured_costs)
