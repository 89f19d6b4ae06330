"""`llmlab generate` and `llmlab chat` on a tiny run dir built here (a BPE tokenizer trained on the sonnets sample, a
random Transformer) and on the same model exported as an HF dir. Reference: `llmlab.infer.generate.generate` on the
same prompt ids (greedy and seeded: exact text); --compile against the same greedy text."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from llmlab.cli import generate_cmds
from llmlab.data.samples import sample_text
from llmlab.errors import LlmlabError
from llmlab.infer.generate import generate
from llmlab.model.config import TransformerConfig
from llmlab.model.hf import save_hf_model
from llmlab.model.io import save_model
from llmlab.model.transformer import Transformer
from llmlab.serve.engine import Engine
from llmlab.tokenizer import train_tokenizer

# the registration cli/main.py does
app = typer.Typer()
app.command("generate")(generate_cmds.generate)
app.command("chat")(generate_cmds.chat)
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An llmlab run dir: model_config.json + model.safetensors + tokenizer/."""
    out = tmp_path_factory.mktemp("run") / "model"
    tokenizer = train_tokenizer(sample_text(), 320)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=96,
                                          init_std=0.2))
    save_model(model, out)
    tokenizer.save(out / "tokenizer")
    return out


def expected_text(run_dir, prompt: str, **sampling) -> str:
    """What generate() gives for [eos] + encode(prompt) (a document start, as the model was trained), without eos."""
    model = generate_cmds.load_model(run_dir)
    tok = generate_cmds.find_tokenizer(run_dir)
    ids = [tok.eos_id] + tok.encode(prompt)
    out = generate(model, torch.tensor([ids]), eos_token_id=tok.eos_id, **sampling)[0, len(ids):].tolist()
    return tok.decode([t for t in out if t != tok.eos_id])


@pytest.mark.parametrize("sampling", [["--temperature", "0"], ["--temperature", "0.8", "--top-k", "40", "--seed", "3"]])
def test_generate_and_stream(run_dir, sampling):
    args = ["generate", str(run_dir), "--prompt", "Shall I compare thee", "--max-new-tokens", "24", *sampling]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    temperature = float(sampling[1])
    seed = int(sampling[-1]) if "--seed" in sampling else None
    text = expected_text(run_dir, "Shall I compare thee", max_new_tokens=24, temperature=temperature,
                         top_k=40 if seed is not None else None, seed=seed)
    assert result.stdout == text + "\n" and "tokens/s" in result.stderr
    streamed = runner.invoke(app, [*args, "--stream"])
    assert streamed.exit_code == 0 and streamed.stdout == result.stdout


def test_generate_compile_equals_eager(run_dir, monkeypatch):
    """--compile (decode steps as one torch.compile'd graph) prints the same greedy text as eager decoding, through
    infer.generate.stream with compile=True (not the serving engine), streamed or not."""
    calls = []
    stream = generate_cmds.generate_stream
    monkeypatch.setattr(generate_cmds, "generate_stream",
                        lambda *a, **kw: calls.append(kw["compile"]) or stream(*a, **kw))
    monkeypatch.setattr(generate_cmds, "Engine", None)  # generate must not need the engine
    args = ["generate", str(run_dir), "--prompt", "Shall I compare thee", "--max-new-tokens", "40",
            "--temperature", "0"]
    eager = runner.invoke(app, args)
    compiled = runner.invoke(app, [*args, "--compile"])
    streamed = runner.invoke(app, [*args, "--compile", "--stream"])
    assert eager.exit_code == compiled.exit_code == streamed.exit_code == 0, compiled.output
    assert compiled.stdout == streamed.stdout == eager.stdout == expected_text(
        run_dir, "Shall I compare thee", max_new_tokens=40, temperature=0.0) + "\n"
    assert calls == [False, True, True] and "tokens/s" in compiled.stderr
    assert "s of it compiling" in compiled.stderr and "compiling" not in eager.stderr


def test_generate_errors(run_dir):
    long = runner.invoke(app, ["generate", str(run_dir), "--prompt", "word " * 200])
    assert isinstance(long.exception, LlmlabError) and "context is 96" in str(long.exception)
    missing = runner.invoke(app, ["generate", str(run_dir / "nope"), "--prompt", "x"])
    assert isinstance(missing.exception, LlmlabError) and "does not exist" in str(missing.exception)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor failed\n  a long\n  traceback")

    with pytest.MonkeyPatch.context() as mp:  # a failed compilation: one line that says what to do
        mp.setattr(importlib.import_module("llmlab.infer.generate"), "_compiled_decode_step", broken)
        failed = runner.invoke(app, ["generate", str(run_dir), "--prompt", "x", "--compile", "--temperature", "0"])
    assert isinstance(failed.exception, LlmlabError) and "\n" not in str(failed.exception)
    assert "inductor failed" in str(failed.exception) and "compile=False" in str(failed.exception)


def test_chat_keeps_history_and_ends_cleanly(run_dir, monkeypatch):
    """Each turn's prompt is the ChatML conversation so far; /reset forgets it; /exit and end of input quit."""
    prompts = []
    submit = Engine.submit
    monkeypatch.setattr(Engine, "submit", lambda self, ids, params, **kw: prompts.append(
        self.tokenizer.decode(ids)) or submit(self, ids, params, **kw))
    args = ["chat", str(run_dir), "--system", "Be brief.", "--max-new-tokens", "8", "--seed", "0"]
    result = runner.invoke(app, args, input="Hello\nHow are you?\n/reset\nAgain\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("> ") == 5 and "ChatML" in result.stdout
    assert len(prompts) == 3
    assert prompts[0] == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" \
                         "<|im_start|>assistant\n"
    assert prompts[1].startswith(prompts[0]) and prompts[1].endswith(
        "<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n")
    assert prompts[2] == prompts[0].replace("Hello", "Again")
    eof = runner.invoke(app, ["chat", str(run_dir), "--max-new-tokens", "4"], input="Hi\n")
    assert eof.exit_code == 0 and eof.stdout.count("> ") == 2


def test_chat_compile_equals_eager(run_dir, dynamo_counters, monkeypatch):
    """--compile: the engine's decode step is compiled before the first message (one graph, its time reported apart
    on stderr) and the greedy replies are those of the eager engine; a failed compilation is a one-line error."""
    args = ["chat", str(run_dir), "--max-new-tokens", "12", "--temperature", "0"]
    lines = "Hello\nHow are you?\n"
    eager = runner.invoke(app, args, input=lines)
    compiled = runner.invoke(app, [*args, "--compile"], input=lines)
    assert eager.exit_code == compiled.exit_code == 0, compiled.output
    assert compiled.stdout == eager.stdout and eager.stdout.count("> ") == 3  # two replies, then end of input
    assert "s]" in compiled.stderr.splitlines()[-1] and "compil" not in eager.stderr
    assert dict(dynamo_counters["graph_break"]) == {} and dynamo_counters["stats"]["unique_graphs"] == 1

    def broken(*args, **kwargs):
        raise RuntimeError("inductor failed\n  a long\n  traceback")

    monkeypatch.setattr(importlib.import_module("llmlab.serve.model_runner"), "_compiled_step", broken)
    failed = runner.invoke(app, [*args, "--compile"], input=lines)
    assert isinstance(failed.exception, LlmlabError) and "\n" not in str(failed.exception)
    assert "inductor failed" in str(failed.exception) and "compile=False" in str(failed.exception)
    assert "> " not in failed.stdout  # it failed before the first message


def test_chat_drops_old_turns_to_fit_the_context(run_dir):
    """A conversation longer than the context loses its oldest turns; a message that alone does not fit is
    refused with a note and the chat goes on."""
    lines = ["Tell me of summer days and darling buds of May " * 2] * 4 + ["word " * 120, "Hi", "/exit"]
    result = runner.invoke(app, ["chat", str(run_dir), "--max-new-tokens", "16"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "does not fit the model's context of 96 tokens" in result.stderr
    assert result.stdout.count("> ") == 7


def test_hf_dir_with_its_chat_template(run_dir, tmp_path):
    """The same model as an HF dir (config.json, tokenizer.json beside it, a Jinja chat_template): generate gives
    the same greedy text after the bos token; chat renders the model's own template."""
    hf = tmp_path / "hf"
    save_hf_model(generate_cmds.load_model(run_dir), hf)
    generate_cmds.find_tokenizer(run_dir).save(hf)
    config = json.loads((hf / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m.content }}\n{% endfor %}<|im_start|>"
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["generate", str(hf), "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    tok = generate_cmds.find_tokenizer(hf)
    ids = [tok.bos_id] + tok.encode("Hi")
    out = generate(generate_cmds.load_model(hf), torch.tensor([ids]), 5, temperature=0, eos_token_id=tok.eos_id)
    assert result.stdout == tok.decode([t for t in out[0, len(ids):].tolist() if t != tok.eos_id]) + "\n"
    chat = runner.invoke(app, ["chat", str(hf), "--max-new-tokens", "4"], input="Hi\n")
    assert chat.exit_code == 0 and "its own chat template" in chat.stdout
