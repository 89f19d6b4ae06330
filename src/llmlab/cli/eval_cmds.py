"""`llmlab eval ...`: evaluate a MODEL (llmlab run dir or HF checkpoint dir) on the user's text, or score generated
text against references (BLEU, chrF, ROUGE, METEOR)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llmlab.cli.model_cmds import MODEL_ARG
from llmlab.errors import LlmlabError
from llmlab.eval.perplexity import evaluate_text
from llmlab.model.io import load_model
from llmlab.tokenizer import find_tokenizer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # help text is plain: "[8]" is a default, not markup
console = Console()


@app.callback()
def evaluate() -> None:
    """Evaluate MODEL on text (perplexity, bits per byte); score predictions against references (BLEU, chrF, ROUGE,
    METEOR)."""


@app.command("perplexity", help="Perplexity and bits per byte of MODEL on a text file, HF's strided sliding window.")
def perplexity(
    model: Path = MODEL_ARG,
    data: Path = typer.Option(..., "--data", help="A .txt file, or .jsonl with a \"text\" field per line."),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per window (default: the model's max_seq_len)."),
    stride: int = typer.Option(None, "--stride", help="Window step; < max-length overlaps (default: max-length // 2)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: MODEL's own, or bytes)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
) -> None:
    text = read_eval_text(data)
    m = load_model(model)
    tok = find_tokenizer(model, m.cfg.vocab_size, tokenizer)
    max_length = m.cfg.max_seq_len if max_length is None else max_length
    stride = max(1, max_length // 2) if stride is None else stride
    with Progress(TextColumn("[bold]windows"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("eval", total=None)
        report = evaluate_text(m, tok, text, max_length=max_length, stride=stride, batch_size=batch_size,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    r = report.perplexity
    t = Table(title=f"perplexity of {model} on {data.name} — max_length {max_length}, stride {stride}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("tokens (scored / in text)", f"{r.n_tokens:,} / {r.n_input_tokens:,}")
    t.add_row("windows", f"{r.n_windows:,}")
    t.add_row("nll / token (nats)", f"{r.nll:.4f}")
    t.add_row("perplexity", f"{r.ppl:.4f}")
    t.add_row("perplexity, HF guide's weighting", f"{r.hf_guide_ppl:.4f}")
    t.add_row("bits / token", f"{r.bits_per_token:.4f}")
    t.add_row("bits / byte", f"{report.bits_per_byte:.4f}  ({report.n_bytes:,} bytes)")
    console.print(t)


def read_eval_text(path: Path) -> str:
    """A .txt file whole, or a .jsonl file's "text" fields joined by blank lines (as the HF guide joins WikiText)."""
    from llmlab.data.load import JSONL_SUFFIXES, TEXT_SUFFIXES, read_jsonl, read_text

    if path.is_dir():
        raise LlmlabError(f"--data {path} is a directory: give a .txt or .jsonl file")
    if not path.is_file():
        raise LlmlabError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_text(path)
    if suffix in JSONL_SUFFIXES:
        return "\n\n".join(doc.text for doc in read_jsonl(path))
    raise LlmlabError(f"--data {path}: expected a .txt or .jsonl file, got {suffix or 'no suffix'!r}")


PRED_OPT = typer.Option(..., "--pred", metavar="FILE", help="Predictions (hypotheses), one segment per line.")
REF_OPT = typer.Option(..., "--ref", metavar="FILE",
                       help="References, one segment per line, parallel to --pred; repeat for several.")
JSON_OPT = typer.Option(False, "--json", help="Print the scores as JSON instead of a table.")


def read_segments(pred: Path, refs: list[Path]) -> tuple[list[str], list[list[str]]]:
    """The lines of --pred and of each --ref (split on newlines only), which must have the same count."""
    def lines(flag: str, path: Path) -> list[str]:
        if not path.is_file():
            raise LlmlabError(f"{flag} {path}: no such file")
        text = path.read_text(encoding="utf-8")
        out = text.split("\n")
        return out[:-1] if out[-1] == "" else out

    hyps = lines("--pred", pred)
    if not hyps:
        raise LlmlabError(f"--pred {pred} is empty: one segment per line expected")
    streams = [lines("--ref", r) for r in refs]
    for path, stream in zip(refs, streams, strict=True):
        if len(stream) != len(hyps):
            raise LlmlabError(f"--ref {path} has {len(stream)} lines, --pred {pred} has {len(hyps)}: "
                              "one segment per line in each")
    return hyps, streams


def _title(metric: str, pred: Path, n_segments: int, n_refs: int, details: str) -> str:
    return f"{metric} of {pred.name}, {n_segments:,} segments, {n_refs} reference(s) — {details}"


def _print_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@app.command("bleu", help="Corpus BLEU and chrF2 of --pred against --ref files, as sacrebleu computes them.")
def bleu(
    pred: Path = PRED_OPT,
    ref: list[Path] = REF_OPT,
    tokenize: str = typer.Option("13a", "--tokenize", help="13a (mteval-v13a, the default), zh (CJK characters) "
                                                            "or none."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Case-insensitive BLEU and chrF."),
    smooth: str = typer.Option("exp", "--smooth", help="exp, floor, add-k or none (sacrebleu's smooth_method)."),
    as_json: bool = JSON_OPT,
) -> None:
    from llmlab.eval.bleu import SMOOTH_DEFAULTS, TOKENIZERS, corpus_bleu
    from llmlab.eval.chrf import corpus_chrf

    if tokenize not in TOKENIZERS:
        raise LlmlabError(f"--tokenize {tokenize}: expected one of {', '.join(TOKENIZERS)}")
    if smooth not in SMOOTH_DEFAULTS:
        raise LlmlabError(f"--smooth {smooth}: expected one of {', '.join(SMOOTH_DEFAULTS)}")
    hyps, refs = read_segments(pred, ref)
    b = corpus_bleu(hyps, refs, tokenizer=tokenize, lowercase=lowercase, smooth_method=smooth)
    chrf = corpus_chrf(hyps, refs, lowercase=lowercase).score
    if as_json:
        _print_json({"bleu": b.score, "precisions": b.precisions, "counts": b.counts, "totals": b.totals,
                     "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len, "chrf": chrf, "segments": len(hyps),
                     "references": len(refs), "tokenize": tokenize, "lowercase": lowercase, "smooth": smooth})
        return
    t = Table(title=_title("BLEU", pred, len(hyps), len(refs),
                           f"tokenize {tokenize}, {'lowercased' if lowercase else 'cased'}, smooth {smooth}"))
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("BLEU", f"{b.score:.2f}")
    for n, (p, c, tot) in enumerate(zip(b.precisions, b.counts, b.totals, strict=True), start=1):
        t.add_row(f"{n}-gram precision (matched / total)", f"{p:.2f}  ({c:,} / {tot:,})")
    t.add_row("brevity penalty", f"{b.bp:.4f}")
    t.add_row("length ratio (hyp / ref tokens)",
              f"{b.sys_len / b.ref_len if b.ref_len else 0:.4f}  ({b.sys_len:,} / {b.ref_len:,})")
    t.add_row("chrF2", f"{chrf:.2f}")
    console.print(t)


@app.command("rouge", help="ROUGE-1, -2, -L and -Lsum of --pred against --ref files, as rouge-score computes them; "
                           "the mean over segments, the best reference per segment.")
def rouge(
    pred: Path = PRED_OPT,
    ref: list[Path] = REF_OPT,
    stemmer: bool = typer.Option(False, "--stemmer", help="Porter-stem tokens longer than 3 letters "
                                                          "(rouge-score's use_stemmer)."),
    sentence_sep: str = typer.Option(None, "--sentence-sep", help="Split each line into sentences at this marker "
                                                                  "for rougeLsum (e.g. <n>); default: a line is "
                                                                  "one sentence."),
    as_json: bool = JSON_OPT,
) -> None:
    from llmlab.eval.rouge import ROUGE_TYPES, corpus_rouge

    hyps, refs = read_segments(pred, ref)
    if sentence_sep:
        hyps = [h.replace(sentence_sep, "\n") for h in hyps]
        refs = [[r.replace(sentence_sep, "\n") for r in s] for s in refs]
    scores = corpus_rouge(hyps, refs, ROUGE_TYPES, use_stemmer=stemmer)
    if as_json:
        _print_json({"scores": {k: s._asdict() for k, s in scores.items()}, "segments": len(hyps),
                     "references": len(refs), "stemmer": stemmer})
        return
    t = Table(title=_title("ROUGE", pred, len(hyps), len(refs),
                           f"{'Porter-stemmed, ' if stemmer else ''}mean over segments"))
    for col in ("type", "precision", "recall", "F"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for k, s in scores.items():
        t.add_row(k, f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.fmeasure:.4f}")
    console.print(t)


@app.command("meteor", help="METEOR of --pred against --ref files as nltk computes it (whitespace tokens; exact, "
                            "stem and, with --wordnet, synonym matches): the mean over segments.")
def meteor(
    pred: Path = PRED_OPT,
    ref: list[Path] = REF_OPT,
    wordnet: bool = typer.Option(False, "--wordnet", help="Synonym matches from nltk's WordNet (needs nltk and "
                                                          "nltk.download('wordnet')); default: none."),
    as_json: bool = JSON_OPT,
) -> None:
    from llmlab.eval.meteor import corpus_meteor, nltk_wordnet

    hyps, refs = read_segments(pred, ref)
    score = corpus_meteor(hyps, refs, wordnet=nltk_wordnet() if wordnet else None)
    if as_json:
        _print_json({"meteor": score, "segments": len(hyps), "references": len(refs), "wordnet": wordnet})
        return
    t = Table(title=_title("METEOR", pred, len(hyps), len(refs),
                           f"{'WordNet synonyms' if wordnet else 'no synonyms'}, mean over segments"))
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("METEOR", f"{score:.4f}")
    console.print(t)
