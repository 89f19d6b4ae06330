"""`llmlab bench ...`: runs the scripts in the repository's benchmarks/ folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from llmlab.errors import LlmlabError

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # help text is plain: "[8]" is a default, not markup


def load_benchmark(name: str):
    """benchmarks/NAME.py from the source checkout (found from the current directory or the package)."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *Path.cwd().parents, *here.parents):
        script = root / "benchmarks" / f"{name}.py"
        if script.is_file():
            spec = importlib.util.spec_from_file_location(f"llmlab_bench_{name}", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise LlmlabError(f"benchmarks/{name}.py not found: benchmarks live in the source checkout; run from a clone")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise LlmlabError(f"expected comma-separated integers, got {text!r}") from None


@app.command("attention", help="Forward+backward time and peak memory of naive / sdpa / flash attention.")
def attention(
    seq_lens: str = typer.Option("128,256,512,1024", help="Comma-separated sequence lengths."),
    batch: int = typer.Option(1, min=1),
    heads: int = typer.Option(8, min=1),
    head_dim: int = typer.Option(64, min=1),
    causal: bool = typer.Option(True),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
    block: int = typer.Option(128, help="Flash tile size (block_q = block_k)."),
    repeats: int = typer.Option(3, min=1),
    save: Path = typer.Option(None, help="Also write the results as JSON here (e.g. benchmarks/results/...)."),
) -> None:
    load_benchmark("attention").main(seq_lens=_ints(seq_lens), batch=batch, heads=heads, head_dim=head_dim,
                                     causal=causal, device=device, dtype=dtype, block=block, repeats=repeats,
                                     save=save)


@app.command("tokenizer", help="BPE training time vs HF tokenizers, encoding MB/s vs tiktoken; same text, same vocab.")
def tokenizer(
    vocab_size: int = typer.Option(4096, help="Tokens in all (256 bytes + merges + special tokens)."),
    text_bytes: int = typer.Option(1_000_000, min=1, help="Bytes of text: the inputs repeated as needed."),
    input: list[Path] = typer.Option(None, "--input",
                                     help="UTF-8 text file (repeatable); default: the shipped sample."),
    repeats: int = typer.Option(3, min=1, help="Times are the best of this many runs."),
    save: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    load_benchmark("tokenizer").main(vocab_size=vocab_size, text_bytes=text_bytes, inputs=input,
                                     repeats=repeats, save=save)


@app.command("train", help="Training step tokens/s, MFU and peak memory: ours vs the same model in HF transformers.")
def train(
    preset: str = typer.Option("tiny", help="Model size: tiny, small, gpt2-124m."),
    style: str = typer.Option(None, help="Model family: gpt2, llama, mistral, qwen2, mixtral, "
                                         "qwen2-moe [default per preset]."),
    vocab_size: int = typer.Option(4096, min=2, help="Vocabulary size of both models."),
    batch_size: int = typer.Option(8, min=1, help="Sequences per step."),
    seq_len: int = typer.Option(128, min=2, help="Tokens per sequence."),
    steps: int = typer.Option(20, min=1, help="Timed steps per model and round."),
    warmup: int = typer.Option(3, min=0, help="Untimed steps per model before the rounds."),
    rounds: int = typer.Option(3, min=1, help="Rounds; ours and HF alternate step by step, who leads alternating."),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32, or bfloat16 (autocast, fp32 weights)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile both models."),
    save: Path = typer.Option(None, help="Add the run to this JSON file (e.g. benchmarks/results/train-cpu.json)."),
) -> None:
    load_benchmark("train").main(preset=preset, style=style, vocab_size=vocab_size, batch_size=batch_size,
                                 seq_len=seq_len, steps=steps, warmup=warmup, rounds=rounds, dtype=dtype,
                                 device=device, compile=compile, save=save)


@app.command("speculative", help="Speculative decoding (layer-skip draft, prompt lookup) vs plain: tok/s, speed-up, "
                                 "acceptance rate; same model, prompt and settings.")
def speculative(
    model: Path = typer.Option(None, help="llmlab run dir or HF checkpoint dir; default: random weights."),
    preset: str = typer.Option("small", help="Preset of the random-weights model (without --model)."),
    new_tokens: int = typer.Option(128, min=1),
    k: int = typer.Option(4, "-k", min=1, help="Draft tokens per round."),
    draft_layers: int = typer.Option(None, min=1, help="Blocks in the self-speculative draft; default: half."),
    ngram: int = typer.Option(3, min=1, help="Prompt lookup: longest n-gram matched in the context."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (tokens checked equal to plain decoding)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per decoder (median)."),
    threads: int = typer.Option(1, min=1, help="CPU threads (1 keeps timings stable on a shared machine)."),
    save: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    load_benchmark("speculative").main(model=model, preset=preset, new_tokens=new_tokens, k=k,
                                       draft_layers=draft_layers, ngram=ngram, temperature=temperature,
                                       repeats=repeats, threads=threads, save=save)


@app.command("peft-memory", help="Trainable params and peak training memory: full / LoRA / QLoRA on the same model.")
def peft_memory(
    preset: str = typer.Option("small"), batch: int = typer.Option(4, min=1), seq_len: int = typer.Option(256, min=2),
    r: int = typer.Option(8, min=1), device: str = typer.Option("cpu", help="cpu or cuda"),
    save: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    load_benchmark("peft_memory").main(preset=preset, batch=batch, seq_len=seq_len, r=r, device=device, save=save)


@app.command("generate", help="Batch-1 greedy decode tok/s and time to first token vs HF generate on the same weights; "
                              "KV cache bytes per token; prompt-lookup speed-up.")
def generate(
    preset: str = typer.Option("small", help="Model size (random weights): tiny, small, gpt2-124m."),
    prompt_len: int = typer.Option(64, min=2, help="Prompt tokens (random ids)."),
    new_tokens: int = typer.Option(128, min=2, help="Tokens generated per run."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per side (median); ours and HF alternate."),
    threads: int = typer.Option(1, min=1, help="CPU threads for both (1 is steadier on a shared machine)."),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="Also time generate(compile=True)."),
    save: Path = typer.Option(None, help="Add the run to this JSON file (e.g. benchmarks/results/generate-cpu.json)."),
) -> None:
    load_benchmark("generate").main(preset=preset, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                                    threads=threads, device=device, dtype=dtype, compile=compile, save=save)


@app.command("serve", help="llmlab serve under concurrent streaming clients on 127.0.0.1: tok/s, TTFT and latency "
                           "p50/p99 per level, vs HF generate answering the same requests one at a time.")
def serve(
    preset: str = typer.Option("tiny", help="Model size (random weights): tiny, small, gpt2-124m."),
    concurrency: str = typer.Option("1,4,16", help="Comma-separated numbers of clients in flight."),
    requests_per_level: int = typer.Option(32, min=1, help="Requests sent at each concurrency level."),
    max_tokens: int = typer.Option(32, min=1, help="max_tokens of each request."),
    threads: int = typer.Option(1, min=1, help="CPU threads (1 is steadier on a shared machine)."),
    save: Path = typer.Option(None, help="Add the run to this JSON file (e.g. benchmarks/results/serve-cpu.json)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="Serve with the engine's compiled decode step."),
) -> None:
    load_benchmark("serve").main(preset=preset, concurrency=tuple(_ints(concurrency)),
                                 requests_per_level=requests_per_level, max_tokens=max_tokens, threads=threads,
                                 save=save, compile=compile)
