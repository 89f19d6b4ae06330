"""The SQLite progress file: timer, attempts and best time, hints, streak, weakest tags, reviews, mocks."""

from __future__ import annotations

from llmlab.drills.progress import DAY, Progress


def test_progress_round_trip(tmp_path):
    p = Progress(tmp_path / "p.sqlite")
    t = 1_700_000_000.0
    assert p.status("softmax").status == "not tried" and p.elapsed("softmax") is None
    p.start("softmax", now=t)
    assert p.record("softmax", False, 3, 7, ["large-logits", "dim"], now=t + 60) == 60
    assert p.status("softmax").status == "failed"
    p.record("softmax", True, 7, 7, [], now=t + 300)
    p.start("softmax", now=t + 400)
    p.record("softmax", True, 7, 7, [], now=t + 520)
    st = p.status("softmax")
    assert (st.status, st.best_seconds, st.attempts) == ("passed", 120, 3)
    assert p.weakest_tags() == [("dim", 1), ("large-logits", 1)]
    assert p.area_progress({"basics": ["softmax", "cross_entropy"]}) == {"basics": (1, 0, 2)}
    assert p.streak(now=t + 600) == 1 and p.streak(now=t + 10 * DAY) == 0
    assert [p.reveal_hint("softmax", 3) for _ in range(4)] == [1, 2, 3, 3]
    # two passes in a row: due again 3 days after the last one
    assert p.due_for_review(["softmax"], now=t + 2 * DAY) == []
    assert [n for n, _ in p.due_for_review(["softmax"], now=t + 4 * DAY)] == ["softmax"]
    p.close()
    again = Progress(tmp_path / "p.sqlite")  # persisted
    assert again.hint_level("softmax") == 3 and again.status("softmax").attempts == 3


def test_mock_is_active_until_its_time_is_up(tmp_path):
    p = Progress(tmp_path / "p.sqlite")
    p.start_mock(["rope", "softmax"], 45, now=1000.0)
    assert p.active_mock(now=1000.0 + 60) == (["rope", "softmax"], 45 * 60 - 60)
    assert p.active_mock(now=1000.0 + 46 * 60) is None
    assert p.elapsed("rope", now=1100.0) == 100
