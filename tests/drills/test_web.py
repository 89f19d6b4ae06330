"""`llmlab drill web`: the API through FastAPI's TestClient, then the page end to end in Debian's headless Chromium
(Playwright's Python package drives it, never a downloaded browser): open a drill, type a solution, Check, and the
page shows the grader's report. Reference: the grader's report, the lines `llmlab drill check` prints -- the
API must return the same lines. Without Chromium or Playwright the browser test skips (fails under CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmlab.drills import workspace as ws
from llmlab.drills.bank import all_drills
from llmlab.drills.grader import format_report, grade
from llmlab.drills.web import CSRF_HEADER, create_app
from llmlab.serve.background import app_in_background
from tests.browser import chromium

TIMEOUT_MS = 60_000
RIGHT = ("import torch\n\n\ndef softmax(x, dim=-1):\n    e = (x - x.amax(dim, keepdim=True)).exp()\n"
         "    return e / e.sum(dim, keepdim=True)\n")
WRONG = (Path(__file__).parent / "wrong" / "softmax__unstable.py").read_text()
POST = {CSRF_HEADER: "1"}


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(tmp_path, allowed_hosts=("testserver",)))


def test_api(client, tmp_path):
    drills = client.get("/api/drills").json()
    assert [d["name"] for d in drills] == list(all_drills()) and {d["status"] for d in drills} == {"not tried"}

    d = client.get("/api/drills/softmax").json()  # opening starts it: the starter is written, the timer runs
    assert d["source"] == all_drills()["softmax"].starter == (tmp_path / "softmax.py").read_text()
    assert d["hints"] == [] and d["n_hints"] == 3

    assert client.post("/api/drills/softmax/check", json={"source": RIGHT}).status_code == 403  # no header
    r = client.post("/api/drills/softmax/check", json={"source": RIGHT}, headers=POST).json()
    assert r["passed"] and r["lines"][-1].endswith("PASSED") and r["seconds"] is not None
    assert r["summary"]["status"] == "passed" and (tmp_path / "softmax.py").read_text() == RIGHT

    r = client.post("/api/drills/softmax/check", json={"source": WRONG}, headers=POST).json()
    assert not r["passed"] and r["lines"][0].startswith("FAILED")
    drill = all_drills()["softmax"]  # the lines `llmlab drill check` prints, but for the time they took
    assert r["lines"][:-1] == format_report(drill, grade(drill, tmp_path / "softmax.py", isolate=False))[:-1]

    assert client.post("/api/drills/softmax/hint", headers=POST).json()["hints"] == [all_drills()["softmax"].hints[0]]
    assert client.get("/api/drills/softmax").json()["hints"] == [all_drills()["softmax"].hints[0]]
    assert client.post("/api/drills/softmax/reset", headers=POST).json()["source"] == all_drills()["softmax"].starter
    assert (tmp_path / "softmax.py.bak").read_text() == WRONG
    assert "def softmax" in client.get("/api/drills/softmax/solution").json()["source"]


def test_api_refuses_unknown_drills_foreign_hosts_and_cross_site_posts(client, tmp_path):
    assert client.get("/api/drills/nope").status_code == 404
    assert client.post("/api/drills/..%2Fx/check", json={"source": ""}, headers=POST).status_code == 404
    assert client.post("/api/drills/softmax/check", content='{"source": "x"}',
                       headers={"content-type": "text/plain"}).status_code == 403  # a form post cannot set it
    assert client.get("/api/drills", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
    assert not list(tmp_path.glob("*.py"))


def serving(workspace: Path):
    return app_in_background(create_app(workspace), start_timeout=20)


@pytest.fixture(scope="module")
def browser():
    yield from chromium(TIMEOUT_MS)


def test_page_checks_a_solution(browser, tmp_path):
    with serving(tmp_path) as url:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"off-host request {r.url}") if not r.url.startswith(url) else None)
        page.goto(f"{url}/")
        page.click("nav a[data-drill=softmax]")
        page.wait_for_function("document.getElementById('editor').value.includes('raise NotImplementedError')")
        assert page.input_value("#editor") == all_drills()["softmax"].starter

        page.fill("#editor", WRONG)
        page.click("#check")
        page.wait_for_selector("#result[data-state=failed]")
        shown = page.text_content("#result")
        assert shown.startswith("FAILED") and "NotImplementedError" not in shown
        assert page.get_attribute("nav a[data-drill=softmax]", "data-status") == "failed"

        page.click("#hint")
        page.wait_for_selector("#hints li")
        assert page.text_content("#hints li") == all_drills()["softmax"].hints[0]

        page.fill("#editor", RIGHT)
        page.press("#editor", "Control+Enter")
        page.wait_for_selector("#result[data-state=passed]")
        assert "PASSED" in page.text_content("#result") and "time since start" in page.text_content("#result")
        assert page.get_attribute("nav a[data-drill=softmax]", "data-status") == "passed"
        assert page.text_content("#progress").startswith("1/")
        assert errors == []
        page.close()
    assert (tmp_path / "softmax.py").read_text() == RIGHT  # the page wrote the workspace file `check` grades
    assert ws.progress(tmp_path).status("softmax").status == "passed"
