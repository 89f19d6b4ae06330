"""Byte-level BPE head to head, same text and same vocabulary size.

Training: our readable trainer (pure Python, incremental pair counts) vs HF `tokenizers`' BpeTrainer (Rust, parallel).
Encoding: our readable encoder vs tiktoken (Rust) built from the same ranks, single-threaded, and HF `tokenizers`
encoding with its own trained file, in MB/s of UTF-8 text. Our encoder and tiktoken must give identical ids.
Run: `llmlab bench tokenizer` (options: --vocab-size, --text-bytes, --input, --save).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def bench_text(text_bytes: int, inputs: list[Path] | None = None) -> str:
    """`text_bytes` of text: the given files (default: the shipped sample) repeated as needed, cut at a character."""
    from llmlab.data.samples import sample_text

    base = "\n".join(p.read_text(encoding="utf-8") for p in inputs) if inputs else sample_text()
    raw = (base + "\n").encode("utf-8")
    raw = raw * (text_bytes // len(raw) + 1)
    return raw[:text_bytes].decode("utf-8", errors="ignore")


def timed(fn, repeats: int):
    """(result, best seconds of `repeats` calls)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main(vocab_size: int = 4096, text_bytes: int = 1_000_000, inputs: list[Path] | None = None, repeats: int = 3,
         save: Path | None = None) -> dict:
    """Times are the best of `repeats` runs (the machine may be shared)."""
    import tiktoken
    import tokenizers
    from rich.console import Console
    from rich.table import Table
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    from llmlab.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
    from llmlab.tokenizer.pretokenize import GPT4_PATTERN, split

    console = Console()
    text = bench_text(text_bytes, inputs)
    mb = len(text.encode("utf-8")) / 1e6

    with console.status("training ours"):
        ours, ours_train = timed(lambda: train_tokenizer(text, vocab_size, backend="ours"), repeats)
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # HF parallelizes over sequences: give it the text in pieces cut at chunk boundaries (the same chunks in all)
    chunks = split(text, GPT4_PATTERN)
    pieces = ["".join(chunks[i:i + 1000]) for i in range(0, len(chunks), 1000)]
    with console.status("training HF tokenizers"):
        _, hf_train = timed(lambda: hf.train_from_iterator(pieces, trainer), repeats)

    fast = Tokenizer(ours.ranks, ours.pattern, ours.special_tokens, backend="tiktoken")
    with console.status("encoding"):
        ids_ours, ours_enc = timed(lambda: ours.encode(text), repeats)
        ids_tiktoken, tiktoken_enc = timed(lambda: fast.encode(text), repeats)
        ids_hf, hf_enc = timed(lambda: hf.encode(text, add_special_tokens=False).ids, repeats)
    if ids_ours != ids_tiktoken:
        raise RuntimeError("our encoder and tiktoken disagree on the benchmark text")

    result = {
        "vocab_size": vocab_size, "text_bytes": len(text.encode("utf-8")), "repeats": repeats, "cpus": os.cpu_count(),
        "text": [p.name for p in inputs] if inputs else "llmlab sample (repeated)",
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "versions": {"tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__},
        "train_s": {"ours": ours_train, "hf_tokenizers": hf_train},
        "encode_mb_per_s": {"ours": mb / ours_enc, "tiktoken": mb / tiktoken_enc, "hf_tokenizers": mb / hf_enc},
        "bytes_per_token": {"ours": len(text.encode("utf-8")) / len(ids_ours),
                            "hf_tokenizers": len(text.encode("utf-8")) / len(ids_hf)},
    }
    t = Table(title=f"byte-level BPE, vocab {vocab_size:,}, {mb:.2f} MB of text, {os.cpu_count()} CPUs")
    for col, justify in (("", "left"), ("ours (Python)", "right"), ("reference", "left"), ("", "right"),
                         ("ours / reference", "right")):
        t.add_column(col, justify=justify)
    t.add_row("training", f"{ours_train:.2f} s", "HF tokenizers", f"{hf_train:.2f} s",
              f"{ours_train / hf_train:.1f}x the time")
    t.add_row("encoding", f"{mb / ours_enc:.2f} MB/s", "tiktoken, same ranks", f"{mb / tiktoken_enc:.2f} MB/s",
              f"{tiktoken_enc / ours_enc:.3f}x the speed")
    t.add_row("", "", "HF tokenizers, own file", f"{mb / hf_enc:.2f} MB/s", f"{hf_enc / ours_enc:.3f}x the speed")
    t.add_row("bytes / token", f"{result['bytes_per_token']['ours']:.3f}", "HF tokenizers",
              f"{result['bytes_per_token']['hf_tokenizers']:.3f}", "")
    console.print(t)
    console.print("ids: ours == tiktoken on the whole text")
    if save:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"saved {save}")
    return result
