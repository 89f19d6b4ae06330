"""`llmlab drill ...`: hand-write LLM building blocks, graded against llmlab's own code."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.drills import workspace as ws
from llmlab.drills.bank import all_drills, get_drill
from llmlab.drills.progress import Progress

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # help text is plain: "[8]" is a default, not markup
console = Console(highlight=False)

DIR_OPT = typer.Option(Path("llmlab-drills"), "--dir", envvar="LLMLAB_DRILL_DIR",
                       help="Workspace: your drill files and progress.sqlite (env LLMLAB_DRILL_DIR).")


def _progress(workspace: Path) -> Progress:
    return ws.progress(workspace)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


@app.callback()
def drill() -> None:
    """Drills: write attention, losses, sampling, optimizers... by hand; graded like llmlab's own code."""


@app.command("list", help="All drills by area and difficulty, with your status and best time.")
def list_drills(workspace: Path = DIR_OPT) -> None:
    prog = _progress(workspace)
    table = Table("area", "drill", "difficulty", "minutes", "status", "best time", "tags")
    for d in all_drills().values():
        st = prog.status(d.name)
        color = {"passed": "green", "failed": "red"}.get(st.status, "dim")
        table.add_row(d.area, d.name, "*" * d.difficulty, str(d.minutes), f"[{color}]{st.status}[/]",
                      _fmt_time(st.best_seconds), ", ".join(d.tags))
    console.print(table)


@app.command("start", help="Write the drill's starter file into the workspace and start its timer.")
def start(name: str = typer.Argument(..., help="Drill name (see `llmlab drill list`)."),
          force: bool = typer.Option(False, "--force", help="Overwrite an existing file (kept as NAME.py.bak)."),
          workspace: Path = DIR_OPT) -> None:
    d = get_drill(name)
    path = ws.write_starter(workspace, name, force)
    _progress(workspace).start(name)
    console.print(f"{d.statement}\nWrite [bold]{d.func}()[/] in {path} (about {d.minutes} min); timer started.\n"
                  f"Then: llmlab drill check {name}")


@app.command("check", help="Grade your file: visible examples, then hidden cases, in a sandboxed process.")
def check(name: str = typer.Argument(..., help="Drill name."),
          file: Path = typer.Option(None, "--file", help="Grade this file instead of the workspace's NAME.py."),
          seed: int = typer.Option(0, "--seed", help="Seed of the hidden cases."),
          workspace: Path = DIR_OPT) -> None:
    d = get_drill(name)
    result = ws.check(workspace, name, file, seed=seed)
    report, seconds = result.report, result.seconds
    for line in result.lines:
        style = "green" if "PASSED" in line else "red" if line.startswith(("FAILED", "Banned")) else None
        console.print(line, style=style, markup=False)
    prog = _progress(workspace)
    if seconds is not None:
        console.print(f"time since start: {_fmt_time(seconds)} (estimate {d.minutes} min)")
    mock = prog.active_mock()
    if mock and name in mock[0]:
        console.print(f"mock interview: {_fmt_time(mock[1])} left")
    if not report.passed:
        level = prog.hint_level(name)
        if level < len(d.hints):
            console.print(f"stuck? `llmlab drill hint {name}` ({level}/{len(d.hints)} hints shown)")
        raise typer.Exit(1)


@app.command("hint", help="Reveal the next hint (three levels); the ones shown are remembered.")
def hint(name: str = typer.Argument(..., help="Drill name."), workspace: Path = DIR_OPT) -> None:
    d = get_drill(name)
    level = _progress(workspace).reveal_hint(name, len(d.hints))
    for i in range(level):
        console.print(f"hint {i + 1}/{len(d.hints)}: {d.hints[i]}", markup=False)


@app.command("solution", help="Print the reference: the very llmlab code the drill is graded against.")
def solution(name: str = typer.Argument(..., help="Drill name.")) -> None:
    console.print(get_drill(name).solution_source(), markup=False)


@app.command("stats", help="Progress per area, streak, weakest topics.")
def stats(workspace: Path = DIR_OPT) -> None:
    prog = _progress(workspace)
    by_area: dict[str, list[str]] = {}
    for d in all_drills().values():
        by_area.setdefault(d.area, []).append(d.name)
    table = Table("area", "passed", "failed", "not tried")
    for area, (p, f, n) in prog.area_progress(by_area).items():
        table.add_row(area, f"{p}/{n}", str(f), str(n - p - f))
    console.print(table)
    console.print(f"streak: {prog.streak()} day(s)")
    weak = prog.weakest_tags()
    console.print("weakest topics (failed hidden-case tags): " + (", ".join(f"{t} ({c})" for t, c in weak) or "-"))


@app.command("mock", help="A timed mock interview: 2-3 drills from your weakest areas, files written afresh.")
def mock(minutes: float = typer.Option(45, "--minutes", help="Time for the whole mock."),
         n: int = typer.Option(None, "--n", help="Number of drills (default: 2 under 40 minutes, else 3)."),
         seed: int = typer.Option(None, "--seed", help="Seed of the draw (default: the clock)."),
         workspace: Path = DIR_OPT) -> None:
    import random

    prog = _progress(workspace)
    n = n or (2 if minutes < 40 else 3)
    rates = prog.pass_rates()
    weak_tags = {t for t, _ in prog.weakest_tags(10)}
    rng = random.Random(seed if seed is not None else time.time_ns())

    def weakness(d) -> tuple:  # unpassed first, then low pass rate, then drills touching weak tags
        p, c = rates.get(d.name, (0, 0))
        return (p > 0, p / c if c else 0.0, -len(weak_tags & set(d.tags)), rng.random())

    picked = sorted(all_drills().values(), key=weakness)[:n]
    for d in picked:
        ws.write_starter(workspace, d.name, force=True)
    prog.start_mock([d.name for d in picked], minutes)
    ends = time.strftime("%H:%M", time.localtime(time.time() + minutes * 60))
    console.print(f"Mock interview, {minutes:g} minutes (ends {ends}):")
    for d in picked:
        console.print(f"  {d.name} ({d.area}, ~{d.minutes} min): {d.statement}  -> {workspace / (d.name + '.py')}")


@app.command("review", help="Drills due again (spaced repetition): write them again from memory.")
def review(workspace: Path = DIR_OPT) -> None:
    due = _progress(workspace).due_for_review(list(all_drills()))
    if not due:
        console.print("nothing due: pass a drill to schedule its review (1, 3, 7, 21, 60 days)")
        return
    for name, overdue in due:
        console.print(f"  {name} (due {overdue:.1f} days ago): llmlab drill start {name} --force")


@app.command("web", help="The drills as a local page: edit in the browser, Check grades as `check` does.")
def web(port: int = typer.Option(8765, "--port", help="TCP port on 127.0.0.1."),
        open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
        workspace: Path = DIR_OPT) -> None:
    import webbrowser

    import uvicorn

    from llmlab.drills.web import create_app

    url = f"http://127.0.0.1:{port}/"
    console.print(f"drills page: {url} (workspace {workspace.resolve()}); Ctrl+C stops it", soft_wrap=True)
    if open_browser:
        webbrowser.open(url)
    uvicorn.run(create_app(workspace), host="127.0.0.1", port=port, log_level="warning")
