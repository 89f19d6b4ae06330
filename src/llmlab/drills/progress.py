"""The learner's progress in a local SQLite file: timers, attempts, revealed hints, mock interviews, reviews.

Tables: starts (a timer per `start`), attempts (one row per `check`), hints (the highest level revealed),
mocks (a timed mock interview). Spaced repetition: a drill passed n times in a row is due again
REVIEW_DAYS[n - 1] days after its last pass (1, 3, 7, 21, 60 days).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REVIEW_DAYS = (1, 3, 7, 21, 60)
DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS starts (drill TEXT, t REAL);
CREATE TABLE IF NOT EXISTS attempts (drill TEXT, t REAL, passed INTEGER, seconds REAL, n_passed INTEGER,
                                     n_cases INTEGER, failed_tags TEXT);
CREATE TABLE IF NOT EXISTS hints (drill TEXT PRIMARY KEY, level INTEGER);
CREATE TABLE IF NOT EXISTS mocks (t REAL, minutes REAL, drills TEXT);
"""


@dataclass
class DrillStatus:
    status: str  # "not tried" | "failed" | "passed"
    best_seconds: float | None
    attempts: int


class Progress:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- timer and attempts
    def start(self, drill: str, now: float | None = None) -> None:
        with self.db:
            self.db.execute("INSERT INTO starts VALUES (?, ?)", (drill, time.time() if now is None else now))

    def elapsed(self, drill: str, now: float | None = None) -> float | None:
        """Seconds since the last `start` of this drill, None if never started."""
        row = self.db.execute("SELECT MAX(t) FROM starts WHERE drill = ?", (drill,)).fetchone()
        return None if row[0] is None else (time.time() if now is None else now) - row[0]

    def record(self, drill: str, passed: bool, n_passed: int, n_cases: int, failed_tags: list[str],
               now: float | None = None) -> float | None:
        """Store one check; returns the time taken since `start` (None without a start)."""
        now = time.time() if now is None else now
        seconds = self.elapsed(drill, now)
        with self.db:
            self.db.execute("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (drill, now, int(passed), seconds, n_passed, n_cases, ",".join(failed_tags)))
        return seconds

    def status(self, drill: str) -> DrillStatus:
        n, n_pass, best = self.db.execute(
            "SELECT COUNT(*), SUM(passed), MIN(CASE WHEN passed THEN seconds END) FROM attempts WHERE drill = ?",
            (drill,)).fetchone()
        state = "not tried" if n == 0 else "passed" if n_pass else "failed"
        return DrillStatus(state, best, n)

    # ---- hints
    def hint_level(self, drill: str) -> int:
        row = self.db.execute("SELECT level FROM hints WHERE drill = ?", (drill,)).fetchone()
        return 0 if row is None else row[0]

    def reveal_hint(self, drill: str, n_hints: int) -> int:
        """Reveal the next hint (up to n_hints); returns how many are revealed now."""
        level = min(self.hint_level(drill) + 1, n_hints)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO hints VALUES (?, ?)", (drill, level))
        return level

    # ---- stats
    def streak(self, now: float | None = None) -> int:
        """Consecutive days (local time) with at least one passed check, ending today or yesterday."""
        now = time.time() if now is None else now
        days = {int(_local_day(t)) for (t,) in self.db.execute("SELECT t FROM attempts WHERE passed")}
        today = int(_local_day(now))
        d = today if today in days else today - 1
        n = 0
        while d in days:
            n, d = n + 1, d - 1
        return n

    def weakest_tags(self, k: int = 5) -> list[tuple[str, int]]:
        """Tags of hidden cases failed most often (ties by name)."""
        counts: Counter[str] = Counter()
        for (tags,) in self.db.execute("SELECT failed_tags FROM attempts WHERE NOT passed"):
            counts.update(t for t in tags.split(",") if t)
        return sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))[:k]

    def area_progress(self, drills_by_area: dict[str, list[str]]) -> dict[str, tuple[int, int, int]]:
        """area -> (passed, failed, total drills)."""
        out = {}
        for area, names in drills_by_area.items():
            states = [self.status(n).status for n in names]
            out[area] = (states.count("passed"), states.count("failed"), len(names))
        return out

    # ---- spaced repetition and mocks
    def due_for_review(self, names: list[str], now: float | None = None) -> list[tuple[str, float]]:
        """(drill, days overdue) for passed drills whose review date has come, most overdue first."""
        now = time.time() if now is None else now
        due = []
        for name in names:
            rows = self.db.execute("SELECT t, passed FROM attempts WHERE drill = ? ORDER BY t", (name,)).fetchall()
            if not rows or not rows[-1][1]:
                continue
            run = 0  # passes in a row at the end
            for _, passed in reversed(rows):
                if not passed:
                    break
                run += 1
            last = rows[-1][0]
            due_at = last + REVIEW_DAYS[min(run, len(REVIEW_DAYS)) - 1] * DAY
            if now >= due_at:
                due.append((name, (now - due_at) / DAY))
        return sorted(due, key=lambda x: -x[1])

    def pass_rates(self) -> dict[str, tuple[int, int]]:
        """drill -> (passed checks, checks)."""
        rates: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
        for drill, p, n in self.db.execute("SELECT drill, SUM(passed), COUNT(*) FROM attempts GROUP BY drill"):
            rates[drill] = (p, n)
        return rates

    def start_mock(self, drills: list[str], minutes: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("INSERT INTO mocks VALUES (?, ?, ?)", (now, minutes, ",".join(drills)))
        for d in drills:
            self.start(d, now)

    def active_mock(self, now: float | None = None) -> tuple[list[str], float] | None:
        """(drills, seconds left) of the mock interview in progress, if any."""
        now = time.time() if now is None else now
        row = self.db.execute("SELECT t, minutes, drills FROM mocks ORDER BY t DESC LIMIT 1").fetchone()
        if row is None or now > row[0] + row[1] * 60:
            return None
        return row[2].split(","), row[0] + row[1] * 60 - now


def _local_day(t: float) -> float:
    return (t - time.altzone if time.localtime(t).tm_isdst > 0 else t - time.timezone) // DAY
