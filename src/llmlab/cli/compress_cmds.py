"""`llmlab compress MODEL --method ...`: quantize MODEL's Linear layers; write the result as an llmlab run dir
(--out), and/or measure the perplexity of MODEL and of each method on held-out text (--data)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from llmlab.cli.eval_cmds import read_eval_text
from llmlab.cli.model_cmds import MODEL_ARG
from llmlab.compress.calibration import calibration_batches
from llmlab.compress.groupwise import Scheme
from llmlab.compress.quantize_model import CALIBRATED, METHODS, QuantizedModel, quantize_model
from llmlab.errors import LlmlabError
from llmlab.eval.perplexity import TextPerplexity, evaluate_text
from llmlab.model.io import atomic_write, load_model, save_model
from llmlab.tokenizer import find_tokenizer

console = Console()
CALIB_SEQ_LEN = 512  # calibration rows: at most this many tokens (and at most the model's max_seq_len)


def compress(
    model: Path = MODEL_ARG,
    method: str = typer.Option(..., "--method", help=f"{', '.join(METHODS)}; several, comma-separated, compare "
                                                     "on --data (one row each)."),
    bits: int = typer.Option(4, "--bits", help="rtn, gptq, awq: bits per weight."),
    group_size: int = typer.Option(128, "--group-size", help="rtn, gptq, awq: input columns per scale; -1: one "
                                                            "scale per output channel."),
    symmetric: bool = typer.Option(False, "--symmetric", help="rtn, gptq, awq: a grid symmetric about 0, no zero "
                                                             "points [asymmetric]."),
    act_order: bool = typer.Option(False, "--act-order", help="gptq: quantize columns in order of decreasing "
                                                             "activation (Hessian diagonal)."),
    calib: Path = typer.Option(None, "--calib", help="Calibration text, .txt or .jsonl: gptq and awq fit to it; "
                                                     "with --data every method's layer error is measured on it "
                                                     "[llmlab's sample text: Shakespeare's Sonnets]."),
    calib_tokens: int = typer.Option(4096, "--calib-tokens", help="Calibration tokens (the first of --calib)."),
    data: Path = typer.Option(None, "--data", help="Held-out text (.txt or .jsonl): the perplexity of MODEL and "
                                                   "of each method."),
    max_length: int = typer.Option(None, "--max-length", help="--data: tokens per window (default: the model's "
                                                              "max_seq_len; stride half of it)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: MODEL's own, or bytes)."),
    out: Path = typer.Option(None, "--out", help="Write the quantized model (dequantized fp32 weights, usable by "
                                                 "every llmlab command) as an llmlab run dir, with "
                                                 "quantization.json."),
) -> None:
    methods = [m.strip() for m in method.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise LlmlabError(f"--method {m!r}: choose from {', '.join(METHODS)}")
    if out is None and data is None:
        raise LlmlabError("nothing to do: give --out DIR to write the quantized model, --data FILE to measure "
                          "perplexity, or both")
    if out is not None and len(methods) != 1:
        raise LlmlabError(f"--out writes one quantized model; --method lists {len(methods)}: drop --out to compare "
                          "them on --data")
    if out is not None and methods[0] == "llm.int8":
        raise LlmlabError("llm.int8 quantizes activations at run time, which a run dir of weights cannot hold; "
                          "--method int8 writes the same int8 weights")
    if group_size == 0 or group_size < -1:
        raise LlmlabError(f"--group-size {group_size}: give a positive number of columns, or -1 (per channel)")
    scheme = Scheme(bits, None if group_size == -1 else group_size, symmetric)

    fp_model = load_model(model)
    tok = find_tokenizer(model, fp_model.cfg.vocab_size, tokenizer)
    calib_ids, calib_name = None, None
    if data is not None or any(m in CALIBRATED for m in methods):  # comparing: every method's error on it
        if calib is None:
            from llmlab.data.samples import sample_text

            calib_text, calib_name = sample_text(), "llmlab sample: sonnets"
        else:
            calib_text, calib_name = read_eval_text(calib), str(calib)
        seq_len = min(fp_model.cfg.max_seq_len, CALIB_SEQ_LEN)
        calib_ids = calibration_batches(tok.encode(calib_text), calib_tokens, seq_len)
        if data is not None and calib is not None and calib.resolve() == data.resolve():
            console.print("[yellow]note:[/] --calib and --data are the same file: the perplexity is not held out")
    text = read_eval_text(data) if data is not None else None
    max_length = fp_model.cfg.max_seq_len if max_length is None else max_length

    def perplexity(m) -> TextPerplexity:
        return evaluate_text(m, tok, text, max_length=max_length, stride=max(1, max_length // 2), batch_size=4)

    base = perplexity(fp_model) if text is not None else None
    rows: list[tuple[QuantizedModel, TextPerplexity | None]] = []
    for name in methods:
        qmodel = copy.deepcopy(fp_model)
        result = _quantize(qmodel, name, scheme, calib_ids, act_order)
        ppl = perplexity(qmodel) if text is not None else None
        rows.append((result, ppl))
        if out is not None:
            _write_run_dir(out, qmodel, tok, result, scheme, act_order, calib_name, model, base, ppl)
    _print_table(model, scheme, base, rows, data)
    if out is not None:
        console.print(f"wrote {out} (dequantized weights) and {out / 'quantization.json'}", soft_wrap=True)


def _quantize(qmodel, method: str, scheme: Scheme, calib_ids, act_order: bool) -> QuantizedModel:
    """quantize_model with a progress bar over the layers."""
    with Progress(TextColumn(f"[bold]{method}"), BarColumn(), TextColumn("{task.completed}/{task.total} "
                  "{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=None)
        return quantize_model(qmodel, method, scheme, calib_ids, act_order=act_order,
                              progress=lambda done, total, layer: bar.update(task, completed=done, total=total,
                                                                             description=layer))


def _write_run_dir(out: Path, qmodel, tok, result: QuantizedModel, scheme: Scheme, act_order: bool,
                   calib_name: str | None, source: Path, base: TextPerplexity | None, ppl: TextPerplexity | None
                   ) -> None:
    save_model(qmodel, out)
    tok.save(out / "tokenizer")
    info = {"source": str(source), **result.to_json(), "symmetric": scheme.symmetric,
            "act_order": act_order if result.method == "gptq" else None,
            "calibration": {"text": calib_name, "tokens": result.calib_tokens} if calib_name else None}
    if ppl is not None and base is not None:
        info["perplexity"] = {"fp32": base.perplexity.ppl, result.method: ppl.perplexity.ppl}
    atomic_write(out / "quantization.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _print_table(model: Path, scheme: Scheme, base: TextPerplexity | None,
                 rows: list[tuple[QuantizedModel, TextPerplexity | None]], data: Path | None) -> None:
    title = f"quantization of {model}" + (f" — perplexity on {data.name}" if data is not None else "")
    t = Table(title=title)
    t.add_column("method", no_wrap=True)
    t.add_column("grid", no_wrap=True)
    for col in ("bits/w", "layers MiB", "model MiB", "calib err"):
        t.add_column(col, justify="right")
    if base is not None:
        t.add_column("ppl", justify="right")
        t.add_column("delta", justify="right")
        r0 = rows[0][0]
        t.add_row("fp32", "-", "32.00", _mib(r0.fp32_bytes), _mib(r0.model_fp32_bytes), "-",
                  f"{base.perplexity.ppl:.2f}", "")
    for r, ppl in rows:
        grid = {"int8": "absmax/channel", "llm.int8": "absmax/channel, x int8", "nf4": "nf4 b64 dq"}.get(
            r.method, scheme.describe())
        errors = [layer.error for layer in r.layers if layer.error is not None]
        cells = [r.method, grid, f"{8 * r.nbytes / (r.fp32_bytes / 4):.2f}", _mib(r.nbytes), _mib(r.model_bytes),
                 f"{sum(errors) / len(errors):.2e}" if errors else "-"]
        if base is not None and ppl is not None:
            cells += [f"{ppl.perplexity.ppl:.2f}", f"{ppl.perplexity.ppl - base.perplexity.ppl:+.2f}"]
        t.add_row(*cells)
    console.print(t)
    console.print("bits/w and layers MiB: the quantized nn.Linear weights, codes and scales (lm_head and "
                  "embeddings stay fp32); calib err: the mean over layers of ||X dW^T||^2 / ||X W^T||^2 on the "
                  "calibration tokens; llm.int8: int8 x int8 with input columns holding any |x| >= 6 in fp32",
                  soft_wrap=True)
