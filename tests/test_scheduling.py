"""The suite's own scheduling (tests/conftest.py): groups go to the workers most expensive first."""

from helpers.scheduling import GROUP_COSTS_FILE, load_group_costs, longest_first, worker_group


def test_measured_groups_go_first_and_unlisted_ones_by_test_count():
    groups = {"few_long": ["t1"], "many_short": ["t1", "t2", "t3"], "one_short": ["t1"]}
    costs = {"few_long": 100.0}
    assert longest_first(groups, costs) == ["few_long", "many_short", "one_short"]
    assert longest_first(groups, {}) == ["many_short", "few_long", "one_short"]


def test_the_costs_file_names_worker_groups():
    costs = load_group_costs()
    assert costs, f"{GROUP_COSTS_FILE} is missing or empty"
    for name, seconds in costs.items():
        assert seconds >= 0, name
        assert worker_group(name + "::test") == name, f"{name} is not a worker group"
