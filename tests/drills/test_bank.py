"""Every drill: llmlab's reference passes its own grader (float64 reference, per-dtype tolerances), and a
plausible wrong solution (tests/drills/wrong/<drill>__<mistake>.py) fails it. Graded in-process for speed;
test_runner.py covers the sandboxed process."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlab.drills.bank import all_drills
from llmlab.drills.grader import banned_calls, grade, grade_callable

WRONG = sorted((Path(__file__).parent / "wrong").glob("*.py"))


@pytest.mark.parametrize("name", list(all_drills()))
def test_reference_passes_its_grader(name):
    drill = all_drills()[name]
    report = grade_callable(drill, drill.reference)
    assert report.passed, [r.message for r in report.results if not r.ok]
    assert report.n_cases >= 4 and any(c.visible for c in drill.cases()) and len(drill.hints) == 3


@pytest.mark.parametrize("name", list(all_drills()))
def test_every_drill_has_a_failing_wrong_solution(name):
    assert any(p.stem.split("__")[0] == name for p in WRONG), f"no tests/drills/wrong/{name}__*.py"


@pytest.mark.parametrize("path", WRONG, ids=[p.stem for p in WRONG])
def test_wrong_solution_fails(path):
    drill = all_drills()[path.stem.split("__")[0]]
    report = grade(drill, path, isolate=False)
    assert not report.banned, report.banned  # it must fail on values, not on a banned call
    assert report.failure is None
    assert not report.passed and report.first_failure is not None


@pytest.mark.parametrize("name", list(all_drills()))
def test_starter_is_a_stub_that_fails(name, tmp_path):
    drill = all_drills()[name]
    path = tmp_path / f"{name}.py"
    path.write_text(drill.starter)
    assert not banned_calls(drill.starter, drill.banned)
    report = grade(drill, path, isolate=False)
    assert not report.passed and "NotImplementedError" in report.first_failure.message


@pytest.mark.parametrize("name", list(all_drills()))
def test_solution_source_is_llmlab_code(name):
    src = all_drills()[name].solution_source()
    assert "def " in src or "class " in src


def test_hidden_cases_are_seeded():
    drill = all_drills()["self_attention"]
    a, b = drill.cases(seed=3), drill.cases(seed=3)
    assert all(ca.describe() == cb.describe() for ca, cb in zip(a, b, strict=True))
    assert all(c.tags for c in a)


def test_failure_reports_case_tags_error_and_hint():
    drill = all_drills()["self_attention"]
    report = grade(drill, Path(__file__).parent / "wrong" / "self_attention__causal_off_by_one.py", isolate=False)
    bad = report.first_failure
    assert "decode" in bad.case.tags and "max abs error" in bad.message and "at (" in bad.message
    from llmlab.drills.grader import format_report

    text = "\n".join(format_report(drill, report))
    assert "hidden case" in text and "hint (" in text and "Tk - Tq" in text


def test_shape_and_dtype_are_checked_first(tmp_path):
    drill = all_drills()["softmax"]
    (tmp_path / "a.py").write_text("def softmax(x, dim=-1):\n    return x.sum(dim)\n")
    (tmp_path / "b.py").write_text("def softmax(x, dim=-1):\n    return x.double().softmax(dim)\n")
    assert "wrong shape: expected (2, 3), got (2,)" in grade(drill, tmp_path / "a.py", isolate=False) \
        .first_failure.message
    assert "wrong dtype: expected torch.float32, got torch.float64" in grade(
        drill, tmp_path / "b.py", isolate=False).first_failure.message


def test_gradients_are_checked(tmp_path):
    drill = all_drills()["softmax"]
    # right values, but a detached output: no gradient reaches x
    (tmp_path / "s.py").write_text("def softmax(x, dim=-1):\n    x = x.detach()\n"
                                   "    e = (x - x.amax(dim, keepdim=True)).exp()\n"
                                   "    return e / e.sum(dim, keepdim=True)\n")
    report = grade(drill, tmp_path / "s.py", isolate=False)
    assert "grad of x" in report.first_failure.message


def test_banned_calls_are_found_by_syntax_tree():
    src = ("import torch.nn.functional as F\nfrom torch.nn.functional import cross_entropy as ce\n"
           "def f(q, k, v):\n    a = F.scaled_dot_product_attention(q, k, v)\n    return ce(a, k)\n")
    found = banned_calls(src, ("scaled_dot_product_attention", "cross_entropy"))
    assert found == ["line 2: imports cross_entropy from torch.nn.functional",
                     "line 4: calls F.scaled_dot_product_attention()", "line 5: calls ce() (= cross_entropy)"]
    assert banned_calls("def softmax(x):\n    return softmax(x)\n", ("softmax",)) == []  # its own name


def test_banned_call_fails_the_check(tmp_path):
    drill = all_drills()["self_attention"]
    (tmp_path / "s.py").write_text("import torch.nn.functional as F\n\n\ndef attention(q, k, v, causal=False, "
                                   "key_padding_mask=None):\n    return F.scaled_dot_product_attention(q, k, v)\n")
    report = grade(drill, tmp_path / "s.py", isolate=False)
    assert not report.passed and report.banned == ["line 5: calls F.scaled_dot_product_attention()"]


RIGHT = sorted((Path(__file__).parent / "right").glob("*.py"))


@pytest.mark.parametrize("path", RIGHT, ids=[p.stem for p in RIGHT])
def test_solution_written_from_the_docstring_passes(path):
    """Solutions written from the starter's docstring alone, never from llmlab's code: the statement is enough."""
    report = grade(all_drills()[path.stem], path, isolate=False)
    assert report.passed, [r.message for r in report.results if not r.ok]
