"""The benchmark reports are what their data renders (`bench/report.py --check`, run here so that CI runs it), and
the check fails for the reasons it should: a figure changed in a report or its JSON, a figure in the hand-written
notes that the JSON does not give, a report without data, data without a report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

REPORT = ROOT / "bench" / "report.py"


def check(results) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), "--check", "--results", str(results)], capture_output=True,
                          text=True, timeout=120)


def test_every_report_is_what_its_json_renders():
    done = subprocess.run([sys.executable, str(REPORT), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", folder)
    assert check(folder).returncode == 0
    return folder


def test_a_changed_figure_in_a_report_is_found(results):
    report = results / "serving.md"
    report.write_text(report.read_text().replace("297 MiB", "250 MiB"))
    done = check(results)
    assert done.returncode == 1 and "serving.md differs from what its JSON renders" in done.stderr
    assert "-| `flops-mlops serve` | 1 | 10.3 s | 250 MiB" in done.stderr


def test_new_data_without_a_rerun_report_is_found_and_the_rerun_keeps_the_notes(results):
    data = json.loads((results / "serving.json").read_text())
    data["servers"][0]["start_to_ping_s"] = 9.9
    (results / "serving.json").write_text(json.dumps(data))
    notes = (results / "serving.md").read_text().split("## Notes", 1)[1]
    assert check(results).returncode == 1
    written = subprocess.run([sys.executable, str(REPORT), "--results", str(results)], capture_output=True,
                             text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    text = (results / "serving.md").read_text()
    assert "| `flops-mlops serve` | 1 | 9.9 s |" in text and text.endswith(notes)
    assert check(results).returncode == 0


def test_notes_may_not_state_a_figure_the_json_lacks(results):
    report = results / "stack_footprint.md"
    report.write_text(report.read_text() + "- The FTP server took 23 MiB.\n")
    done = check(results)
    assert done.returncode == 1 and "stack_footprint.md: the notes state 23, which the JSON does not give" in done.stderr
    # A figure the generated part shows may be repeated; code spans are not figures.
    report.write_text(report.read_text().replace("- The FTP server took 23 MiB.\n",
                                                 "- The runner used 228 MiB idle (`--repeats 9`).\n"))
    done = check(results)
    assert "the notes state" not in done.stderr


def test_a_report_without_data_and_data_without_a_report_are_found(results):
    (results / "serving.json").unlink()
    (results / "ftp_download.md").unlink()
    done = check(results)
    assert done.returncode == 1
    assert "serving.md: no JSON renders it" in done.stderr
    assert "ftp_download.md differs from what its JSON renders" in done.stderr
