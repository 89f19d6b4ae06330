"""What a drill is, and how a submission is graded against llmlab's own code computed in float64.

Order of checks: banned calls (read from the file's syntax tree), then visible examples, then the seeded hidden
cases; for each case the output's structure, shape and dtype first, then its values within the tolerance of the
case's dtype, then the gradients of the inputs named in `Drill.grad` (layers and losses).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmlab.drills.runner import RunResult, load_function, run_case, run_isolated

# (atol, rtol) against the float64 reference, by the dtype of the case's floating inputs
DEFAULT_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-5, 1e-4),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
}
GRAD_TOL_FACTOR = 5.0  # gradients add a backward pass of rounding


@dataclass
class Case:
    """Keyword arguments of one call, with the tags a failure on it reports (`padding`, `len1`, `fp16`, ...)."""

    inputs: dict[str, Any]
    tags: tuple[str, ...] = ()
    visible: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype that picks the tolerance: the first floating tensor input's; float64 when none."""
        for x in self.inputs.values():
            if isinstance(x, Tensor) and x.is_floating_point():
                return x.dtype
        return torch.float64

    def describe(self) -> str:
        parts = []
        for name, x in self.inputs.items():
            if isinstance(x, Tensor):
                parts.append(f"{name}: {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}")
            elif isinstance(x, dict):  # short ones in full (a JSON schema, tool arguments); big ones by size
                r = repr(x)
                parts.append(f"{name}={r}" if len(r) <= 320 else f"{name}: dict of {len(x)}")
            else:
                parts.append(f"{name}={x!r}")
        return ", ".join(parts)


@dataclass
class Drill:
    """One exercise. `reference`: llmlab's code or a thin adapter calling it; `sources`: what `solution` prints."""

    name: str
    area: str
    difficulty: int  # 1 warm-up, 2 interview standard, 3 hard
    minutes: int  # estimated time to write it
    func: str  # the function the learner writes
    statement: str
    starter: str  # the whole workspace file: imports, signature, docstring, `raise NotImplementedError`
    reference: Callable
    examples: Callable[[], list[Case]]  # visible, shown to the learner
    hidden: Callable[[torch.Generator], list[Case]]  # seeded; each case tagged
    hints: tuple[str, str, str]
    tag_hints: dict[str, str] = field(default_factory=dict)  # tag of a failed case -> the hint that fits it
    tags: tuple[str, ...] = ()
    tol: dict[torch.dtype, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_TOL))
    banned: tuple[str, ...] = ()  # function / attribute names the submission may not call
    grad: tuple[str, ...] = ()  # inputs whose gradients are checked
    compare_as: Callable[[Any], Any] | None = None  # e.g. sampling: logits -> which tokens are masked
    sources: tuple[Any, ...] = ()  # llmlab objects printed by `solution`; the reference itself when empty
    time_limit_s: float = 30.0
    memory_mb: int = 3072

    def cases(self, seed: int = 0) -> list[Case]:
        hidden = self.hidden(torch.Generator().manual_seed(seed))
        return [*self.examples(), *hidden]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return self.tol.get(dtype, DEFAULT_TOL.get(dtype, (0.0, 0.0)))

    def solution_source(self) -> str:
        objs = self.sources or (self.reference,)
        parts = [f"# {o.__module__}.{o.__qualname__}\n{inspect.getsource(o)}" for o in objs]
        if self.sources and self.reference not in self.sources:
            parts.append(f"# the drill's signature, calling the code above\n{inspect.getsource(self.reference)}")
        return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------- banned calls
def banned_calls(source: str, banned: tuple[str, ...]) -> list[str]:
    """`line N: F.softmax(...)`-style findings: calls whose function or attribute name is banned, and imports of
    banned names (so `from torch.nn.functional import cross_entropy as ce` is caught too)."""
    if not banned:
        return []
    tree = ast.parse(source)
    imported: dict[str, str] = {}  # local alias -> banned name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name in banned:
                    imported[a.asname or a.name] = a.name
                    found.append(f"line {node.lineno}: imports {a.name} from {node.module}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in banned:
            found.append(f"line {node.lineno}: calls {ast.unparse(f)}()")
        elif isinstance(f, ast.Name) and f.id in imported:
            found.append(f"line {node.lineno}: calls {f.id}() (= {imported[f.id]})")
    return sorted(set(found), key=lambda s: int(s.split(":")[0].split()[1]))


# ---------------------------------------------------------------------------------------------------- comparison
def _to64(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.double() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def compare(meta: Any, want: Any, got: Any, tol: tuple[float, float], where: str = "output") -> str | None:
    """None if `got` matches; else one message. meta: the reference run in the case's dtype (shape, dtype);
    want: the float64 reference (values)."""
    if isinstance(meta, Tensor):
        if not isinstance(got, Tensor):
            return f"{where}: expected a tensor, got {type(got).__name__}"
        if got.shape != meta.shape:
            return f"{where}: wrong shape: expected {tuple(meta.shape)}, got {tuple(got.shape)}"
        if got.dtype != meta.dtype:
            return f"{where}: wrong dtype: expected {meta.dtype}, got {got.dtype}"
        return _compare_values(want, got, tol, where)
    if isinstance(meta, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(meta):
            n = len(got) if isinstance(got, (tuple, list)) else type(got).__name__
            return f"{where}: expected a {type(meta).__name__} of {len(meta)} items, got {n}"
        for i, (m, w, g) in enumerate(zip(meta, want, got, strict=True)):
            msg = compare(m, w, g, tol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(meta, float) and isinstance(got, (float, int)) and not isinstance(got, bool):
        atol, rtol = tol
        if abs(got - want) <= atol + rtol * abs(want) or (got != got and want != want):
            return None
        return f"{where}: expected {want!r}, got {got!r} (abs error {abs(got - want):.3g})"
    if got != meta:
        return f"{where}: expected {meta!r}, got {got!r}"
    return None


def _compare_values(want: Tensor, got: Tensor, tol: tuple[float, float], where: str) -> str | None:
    if not want.is_floating_point():
        bad = got.to(want.dtype) != want
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            return (f"{where}: {int(bad.sum())} of {bad.numel()} entries differ; first at {idx}: "
                    f"expected {want[idx].item()}, got {got[idx].item()}")
        return None
    w, g = want.double(), got.double()
    nan_w, nan_g = w.isnan(), g.isnan()
    if (nan_w != nan_g).any():
        idx = tuple(int(i) for i in (nan_w != nan_g).nonzero()[0])
        return f"{where}: NaN where the reference has none (or the reverse), first at {idx}: " \
               f"expected {w[idx].item()}, got {g[idx].item()}"
    inf_w, inf_g = w.isinf(), g.isinf()
    if (inf_w != inf_g).any() or (w[inf_w] != g[inf_w]).any():
        idx = tuple(int(i) for i in ((inf_w != inf_g) | (inf_w & (w != g))).nonzero()[0])
        return f"{where}: infinities differ, first at {idx}: expected {w[idx].item()}, got {g[idx].item()}"
    fin = ~(nan_w | inf_w)
    atol, rtol = tol
    err = torch.where(fin, (g - w).abs(), 0.0)
    bad = err > atol + rtol * w.abs()
    if not bad.any():
        return None
    idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
    rel = (err / w.abs().clamp(min=1e-12)).masked_fill(~fin, 0)
    return (f"{where}: values differ in {int(bad.sum())} of {bad.numel()} entries; max abs error "
            f"{err.max().item():.3g} at {idx} (expected {w[idx].item():.6g}, got {g[idx].item():.6g}), "
            f"max rel error {rel.max().item():.3g}; tolerance atol={atol:g}, rtol={rtol:g}")


# ---------------------------------------------------------------------------------------------------- grading
@dataclass
class CaseResult:
    index: int
    case: Case
    ok: bool
    message: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    drill: str
    results: list[CaseResult]
    banned: list[str] = field(default_factory=list)
    failure: str | None = None  # timeout, crash, or a file that does not load
    seconds: float = 0.0
    n_cases: int = 0

    @property
    def passed(self) -> bool:
        return not self.banned and self.failure is None and all(r.ok for r in self.results)

    @property
    def n_passed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def first_failure(self) -> CaseResult | None:
        return next((r for r in self.results if not r.ok), None)

    @property
    def failed_tags(self) -> list[str]:
        return sorted({t for r in self.results if not r.ok for t in r.case.tags})


def _grade_case(drill: Drill, i: int, case: Case, result: dict[str, Any] | None) -> CaseResult:
    if result is None:
        return CaseResult(i, case, False, "not run")
    if "error" in result:
        return CaseResult(i, case, False, "raised:\n" + result["error"].rstrip())
    meta = run_case(drill.reference, case.inputs)
    ref = run_case(drill.reference, _to64(case.inputs), drill.grad)
    for r in (meta, ref):
        if "error" in r:
            raise RuntimeError(f"drill {drill.name}: the reference failed on case {i}:\n{r['error']}")
    got = result["out"]
    meta_out, want = meta["out"], ref["out"]
    if drill.compare_as is not None:
        meta_out, want, got = drill.compare_as(meta_out), drill.compare_as(want), _safe(drill.compare_as, got)
    # the output is held to its own dtype's tolerance (a float32 loss of bf16 logits must be float32-accurate);
    # gradients, which have the inputs' dtype, to the inputs'
    msg = compare(meta_out, want, got, drill.tolerance(_output_dtype(meta_out, case.dtype)))
    if msg is None and drill.grad:
        atol, rtol = drill.tolerance(case.dtype)
        gtol = (atol * GRAD_TOL_FACTOR, rtol * GRAD_TOL_FACTOR)
        for name in drill.grad:
            w, g = ref["grads"].get(name), result["grads"].get(name)
            if w is None:
                continue
            if g is None:
                msg = f"grad of {name}: none (is the output detached from {name}, or computed under no_grad?)"
            else:
                msg = compare(w.to(case.inputs[name].dtype), w, g, gtol, f"grad of {name}")
            if msg:
                break
    return CaseResult(i, case, msg is None, msg or "", result.get("seconds", 0.0))


def _output_dtype(out: Any, default: torch.dtype) -> torch.dtype:
    """The least precise floating dtype among the reference's output tensors; `default` when there is none."""
    tensors = out if isinstance(out, (tuple, list)) else [out]
    dtypes = [t.dtype for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    return max(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else default


def _safe(fn: Callable, x: Any) -> Any:
    try:
        return fn(x)
    except Exception as e:  # the learner returned something the projection cannot read
        return f"<unreadable output: {e}>"


def grade(drill: Drill, path: Path, *, seed: int = 0, isolate: bool = True) -> Report:
    """Grade the learner's file. isolate=False runs it in this process (tests of trusted files only)."""
    path = Path(path)
    source = path.read_text()
    cases = drill.cases(seed)
    try:
        banned = banned_calls(source, drill.banned)
    except SyntaxError as e:
        return Report(drill.name, [], failure=f"syntax error, line {e.lineno}: {e.msg}", n_cases=len(cases))
    if isolate:
        run = run_isolated(path, drill.func, [c.inputs for c in cases], drill.grad,
                           timeout_s=drill.time_limit_s, memory_mb=drill.memory_mb)
    else:
        try:
            fn = load_function(path, drill.func)
        except Exception as e:
            return Report(drill.name, [], banned, failure=f"your file does not load: {e!r}", n_cases=len(cases))
        run = RunResult([run_case(fn, c.inputs, drill.grad) for c in cases])
    return _report(drill, cases, run, banned)


def grade_callable(drill: Drill, fn: Callable, *, seed: int = 0) -> Report:
    """Grade a function in this process (the reference's self-test); no banned-call check, no isolation."""
    cases = drill.cases(seed)
    return _report(drill, cases, RunResult([run_case(fn, c.inputs, drill.grad) for c in cases]), [])


def _report(drill: Drill, cases: list[Case], run: RunResult, banned: list[str]) -> Report:
    if run.stopped_at == 0 and run.failure:  # nothing ran: the file does not load, or it hangs at once
        return Report(drill.name, [], banned, run.failure, run.seconds, len(cases))
    results = [_grade_case(drill, i, c, r) for i, (c, r) in enumerate(zip(cases, run.results, strict=True))]
    if run.stopped_at is not None:
        results[run.stopped_at].message = run.failure or "stopped"
        results = results[:run.stopped_at + 1]
    return Report(drill.name, results, banned, run.failure, run.seconds, len(cases))


def format_report(drill: Drill, report: Report) -> list[str]:
    """The lines `llmlab drill check` prints."""
    lines = []
    if report.banned:
        lines.append(f"Banned shortcut ({', '.join(drill.banned)} may not be called in this drill):")
        lines += [f"  {b}" for b in report.banned]
    if report.failure and not report.results:
        lines.append(f"FAILED: {report.failure}")
    n = report.n_cases
    bad = report.first_failure
    if bad is not None:
        kind = "visible example" if bad.case.visible else "hidden case"
        lines.append(f"FAILED {kind} #{bad.index + 1} of {n}" + (f"  [tags: {', '.join(bad.case.tags)}]"
                                                                   if bad.case.tags else ""))
        lines.append(f"  inputs: {bad.case.describe()}")
        lines += ["  " + ln for ln in bad.message.splitlines()]
        for tag in bad.case.tags:
            if tag in drill.tag_hints:
                lines.append(f"  hint ({tag}): {drill.tag_hints[tag]}")
                break
    lines.append(f"{report.n_passed}/{n} cases passed in {report.seconds:.1f} s"
                 + (" -- PASSED" if report.passed else ""))
    return lines
