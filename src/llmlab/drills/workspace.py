"""The learner's workspace: one file per drill (NAME.py) and progress.sqlite. Shared by `llmlab drill` and the page."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from llmlab.drills.bank import get_drill
from llmlab.drills.grader import Report, format_report, grade
from llmlab.drills.progress import Progress
from llmlab.errors import LlmlabError


def progress(workspace: Path) -> Progress:
    return Progress(Path(workspace) / "progress.sqlite")


def drill_file(workspace: Path, name: str) -> Path:
    get_drill(name)  # an unknown name is an error before any path is built from it
    return Path(workspace) / f"{name}.py"


def write_starter(workspace: Path, name: str, force: bool = False) -> Path:
    """Write the drill's starter as the workspace's NAME.py; with force an existing file is kept as NAME.py.bak."""
    path = drill_file(workspace, name)
    if path.exists() and not force:
        raise LlmlabError(f"{path} exists; edit it, or pass --force to start over (the old file is kept as .bak)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copy(path, path.with_suffix(".py.bak"))
    path.write_text(get_drill(name).starter)
    return path


@dataclass
class CheckResult:
    report: Report
    lines: list[str]  # what `llmlab drill check` prints
    seconds: float | None  # since the drill's last start; None if never started


def check(workspace: Path, name: str, path: Path | None = None, *, seed: int = 0) -> CheckResult:
    """Grade `path` (default: the workspace's NAME.py) in the sandboxed child process and record the attempt."""
    drill = get_drill(name)
    path = path or drill_file(workspace, name)
    if not path.exists():
        raise LlmlabError(f"{path} does not exist: run `llmlab drill start {name}` first")
    report = grade(drill, path, seed=seed)
    prog = progress(workspace)
    try:
        seconds = prog.record(name, report.passed, report.n_passed, report.n_cases, report.failed_tags)
    finally:
        prog.close()
    return CheckResult(report, format_report(drill, report), seconds)
