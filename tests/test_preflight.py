"""Pre-flight checks: refused before anything runs, in one line, with the right status."""

from __future__ import annotations

from collections import namedtuple

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.full_pipeline import main
from tasks.core.errors import RunEnvironmentError, UsageError
from tasks.run.config import build_config
from tasks.run.preflight import check_api, check_run, estimate_writes
from tests.support.servers import free_loopback_port

# One xdist worker runs the tests that share the quick run (conftest).
pytestmark = pytest.mark.xdist_group("quick-run")

QUICK = ["--profile", "quick", "--models", "logistic_regression"]
Usage = namedtuple("Usage", "total used free")


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("arguments", "status", "line"),
    [
        (["--output-dir", "taken.txt"], 2, "error: taken.txt: is a file, not a directory"),
        (["--output-dir", "taken.txt/reports"], 2, "error: taken.txt/reports: {cwd}/taken.txt "
         "is a file, not a directory"),
        (["--data-dir", "taken.txt"], 2, "error: taken.txt: is a file, not a directory"),
        (["--seed", "-1"], 2, "error: seed: Input should be greater than or equal to 0"),
        (["--baseline", "nope"], 2, "error: --baseline nope: no run history in "
         "reports/history.sqlite yet"),
    ],
    ids=["output-dir-is-a-file", "output-dir-under-a-file", "data-dir-is-a-file", "seed",
         "unknown-baseline"],
)  # fmt: skip
def test_a_path_or_value_the_run_cannot_use_is_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys, arguments, status, line
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.txt").write_text("not a directory")
    assert main([*QUICK, *arguments]) == status
    assert last_error_line(capsys) == line.format(cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]


def test_a_disk_without_room_for_the_run_is_refused_with_what_it_needs(
    tmp_path, monkeypatch, capsys
):
    # One disk holds the cache and the reports; tests/test_full_disk.py fills a real one.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "tasks.run.preflight.shutil.disk_usage", lambda path: Usage(10**9, 0, 10**6)
    )
    assert main([*QUICK, "--output-dir", "full/reports"]) == 1
    needs = estimate_writes(build_config("quick", models=["logistic_regression"]))
    total = round(sum(needs.values()))
    assert 75 < total < 85  # the parsed and processed arrays, mostly
    assert last_error_line(capsys) == (
        f"error: data and full/reports: no space left on device (needs about {total} MB)"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_api_that_does_not_answer_is_named_with_both_fixes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_loopback_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        assert main(QUICK) == 1
    assert last_error_line(capsys) == (
        f"error: cannot reach the Prefect API at {url} (connection refused): start the server "
        "(`prefect server start`), or unset PREFECT_API_URL to run on a temporary one"
    )
    assert list(tmp_path.iterdir()) == []


def test_checks_name_the_problem(tmp_path):
    config = build_config("quick", cache_dir=tmp_path / "cache", output_dir=tmp_path / "out")
    check_run(config)  # nothing to create yet: creatable is enough
    assert not (tmp_path / "cache").exists()
    (tmp_path / "cache").write_text("")
    with pytest.raises(UsageError, match=r"cache: is a file, not a directory$"):
        check_run(config)
    with pytest.raises(RunEnvironmentError, match=r"\(connection refused\)"):
        check_api(f"http://127.0.0.1:{free_loopback_port()}/api", timeout_seconds=2)


def test_the_estimate_covers_what_a_quick_run_writes():
    # Measured on a quick run of the five models: 98.5 MB of cache, a 2.35 MB report; while
    # the CNN's model is written, its kept epoch (10.5 MB) is still there.
    needs = estimate_writes(build_config("quick"))
    assert 109 < needs[build_config("quick").cache_dir] < 125
    assert 2.3 < needs[build_config("quick").output_dir] < 3
