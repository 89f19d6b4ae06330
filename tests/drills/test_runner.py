"""The sandboxed child process: one process per check, time limit, memory limit, crashes reported."""

from __future__ import annotations

import time
from dataclasses import replace

from llmlab.drills.bank import all_drills
from llmlab.drills.grader import format_report, grade

REFERENCE = '''import torch


def softmax(x, dim=-1):
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)
'''


def test_isolated_reference_passes(tmp_path):
    path = tmp_path / "softmax.py"
    path.write_text(REFERENCE)
    report = grade(all_drills()["softmax"], path)
    assert report.passed, format_report(all_drills()["softmax"], report)


def test_infinite_loop_is_a_timeout(tmp_path):
    drill = replace(all_drills()["softmax"], time_limit_s=4.0)
    path = tmp_path / "softmax.py"
    path.write_text(REFERENCE.replace("    e = (x", "    if x.shape[0] == 3:\n        while True:\n"
                                                   "            pass\n    e = (x"))
    t0 = time.perf_counter()
    report = grade(drill, path)
    assert time.perf_counter() - t0 < 8.0
    assert not report.passed and "timed out after 4 s" in report.failure
    assert report.results[-1].message.startswith("timed out") and report.n_passed >= 1  # cases before it ran


def test_crash_and_memory_limit_are_reported(tmp_path):
    drill = replace(all_drills()["softmax"], memory_mb=1536)
    path = tmp_path / "softmax.py"
    path.write_text("import os\nimport torch\n\n\ndef softmax(x, dim=-1):\n"
                    "    if x.dim() == 3:\n        os.abort()\n"
                    "    return torch.empty(2**31, dtype=torch.float64)\n")
    report = grade(drill, path)
    assert not report.passed and "crashed (signal 6)" in report.failure
    assert "memory" in report.results[0].message.lower() or "MemoryError" in report.results[0].message


def test_file_that_does_not_load(tmp_path):
    path = tmp_path / "softmax.py"
    path.write_text("import torch\nraise ValueError('boom')\n")
    report = grade(all_drills()["softmax"], path)
    assert report.results == [] and "does not load" in report.failure and "boom" in report.failure
