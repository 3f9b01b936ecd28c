"""The suite's one-line statement of whether the real-browser test ran (tests/conftest.py:browser_summary)."""

from types import SimpleNamespace

from tests.conftest import browser_summary

NODE = "tests/viz/test_browser.py::test_viewer_in_jupyterlab"


def _report(when, outcome, nodeid=NODE, longrepr=None):
    return SimpleNamespace(nodeid=nodeid, when=when, failed=outcome == "failed", location=(nodeid.split("::")[0],),
                           longrepr=longrepr)


def test_a_passing_run_reports_its_checks():
    stats = {"passed": [_report("setup", "passed"), _report("call", "passed"), _report("teardown", "passed"),
                        _report("call", "passed", "tests/test_other.py::t")]}
    assert browser_summary(stats) == "browser test (JupyterLab + Chromium): ran 1 checks, 0 failed or errored"


def test_a_failing_fixture_is_reported_not_silent():
    stats = {"error": [_report("setup", "failed")]}
    assert browser_summary(stats).endswith("ran 1 checks, 1 failed or errored")


def test_a_failing_teardown_after_a_passing_call_counts_as_failed():
    stats = {"passed": [_report("call", "passed")], "error": [_report("teardown", "failed")]}
    assert browser_summary(stats).endswith("ran 1 checks, 1 failed or errored")


def test_a_collection_error_is_reported():
    stats = {"error": [SimpleNamespace(nodeid="tests/viz/test_browser.py", failed=True, longrepr="ImportError")]}
    assert browser_summary(stats).endswith("ran 1 checks, 1 failed or errored")


def test_a_skip_names_its_reason_and_an_unselected_test_says_nothing():
    skipped = _report("setup", "skipped", longrepr=("f", 1, "Skipped: no chromium on PATH"))
    line = browser_summary({"skipped": [skipped]})
    assert line == "browser test (JupyterLab + Chromium): SKIPPED — no chromium on PATH"
    assert browser_summary({"passed": [_report("call", "passed", "tests/test_other.py::t")]}) is None


def test_a_test_file_with_a_look_alike_name_is_not_the_browser_test():
    other = _report("call", "passed", "tests/viz/test_not_the_browser.py::t")
    assert browser_summary({"passed": [other]}) is None
