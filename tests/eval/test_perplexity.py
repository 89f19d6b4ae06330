"""llmlab.eval.perplexity against HF's guide "Perplexity of fixed-length models" (transformers 5.24): the guide's
loop runs on an HF model with random weights; ours runs on the same weights loaded with `llmlab.load_model`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import llmlab
from llmlab.cli.eval_cmds import app
from llmlab.errors import LlmlabError
from llmlab.eval import bits_per_byte, evaluate_text, perplexity, sliding_windows
from llmlab.tokenizer.bytes import ByteTokenizer

V, N = 97, 70  # vocab; stream length (no (max_length, stride) below divides it: the last window is partial)
PAIRS = [(16, 16), (16, 8), (16, 5), (16, 15), (32, 7), (12, 1)]


def hf_guide_ppl(model, ids: torch.Tensor, max_length: int, stride: int) -> float:
    """The guide's code, as published (ids: (1, N)), minus tqdm and the device move."""
    seq_len = ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # subtract batch_size due to internal label shift
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    avg_nll = nll_sum / n_tokens
    return torch.exp(avg_nll).item()


def hf_exact(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The guide's loop with each window weighted by the labels HF's shifted loss really scores,
    (target_ids[:, 1:] != -100).sum(): returns (ppl, tokens scored)."""
    seq_len, nll_sum, n_tokens, prev_end_loc = ids.size(1), 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        scored = (target_ids[:, 1:] != -100).sum().item()
        if scored:
            with torch.no_grad():
                nll_sum += model(input_ids, labels=target_ids).loss.double().item() * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights ~ N(0, 0.15^2) (norm weights 1 + noise): logits far from uniform, so weighting mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(noise if p.dim() > 1 else p + noise)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (HF model, the same weights in llmlab): GPT-2 (learned positions), Llama (RoPE, GQA)."""
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    hf = {
        "gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                 attn_implementation="eager")),
        "llama": tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    attn_implementation="eager")),
    }
    out = {}
    for name, model in hf.items():
        path = tmp_path_factory.mktemp(name)
        randomise_(model).save_pretrained(path)
        out[name] = model, llmlab.load_model(path)
    return out


@pytest.fixture(scope="module")
def stream() -> torch.Tensor:
    return torch.randint(0, V, (1, N), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("max_length,stride", PAIRS)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_equals_hf_guide(models, stream, name, max_length, stride):
    """Reference: the HF guide's loop on the HF model. hf_guide_ppl equals its number, ppl the loop with exact
    per-window counts (also with the HF model passed in directly), n_tokens that loop's count; fp32 rtol 1e-5.
    stride == max_length: all three agree; stride 1 is where the guide's weights (trg_len - 1 = 0) go most wrong."""
    hf, ours = models[name]
    got = perplexity(ours, stream[0], max_length=max_length, stride=stride)
    guide = hf_guide_ppl(hf, stream, max_length, stride)
    exact, n_scored = hf_exact(hf, stream, max_length, stride)
    assert got.hf_guide_ppl == pytest.approx(guide, rel=1e-5)
    assert got.ppl == pytest.approx(exact, rel=1e-5)
    assert got.n_tokens == n_scored
    if stride == max_length:
        assert got.ppl == pytest.approx(guide, rel=1e-5)
    assert got.bits_per_token == pytest.approx(math.log2(got.ppl), rel=1e-12)
    assert perplexity(hf, stream[0], max_length=max_length, stride=stride).ppl == pytest.approx(exact, rel=1e-5)


def test_batched_windows_equal_one_at_a_time(models, stream):
    """Reference: our own batch_size=1 run; batch_size 3 (full windows stacked, the partial last one alone),
    fp32 rtol 1e-6; progress reports every window."""
    _, ours = models["llama"]
    calls = []
    one = perplexity(ours, stream[0].tolist(), max_length=16, stride=5)
    three = perplexity(ours, stream[0], max_length=16, stride=5, batch_size=3, progress=lambda d, t: calls.append(d))
    assert three.nll == pytest.approx(one.nll, rel=1e-6) and three.n_tokens == one.n_tokens
    assert calls[-1] == three.n_windows and calls == sorted(calls)


def test_lone_last_token_is_nan_in_the_guide_and_unscored_here(models, stream):
    """Reference: HF's guide loop. N = 2 * max_length + 1 with stride == max_length: the last window is one token
    with no context; the guide returns NaN (0 * NaN mean), ours scores nothing there and equals the guide on the
    first 2 * max_length tokens (fp32 rtol 1e-5)."""
    hf, ours = models["gpt2"]
    ids = stream[:, :33]
    assert math.isnan(hf_guide_ppl(hf, ids, 16, 16))
    got = perplexity(ours, ids[0], max_length=16, stride=16)
    assert got.n_tokens == 33 - 3
    assert got.ppl == pytest.approx(hf_guide_ppl(hf, ids[:, :32], 16, 16), rel=1e-5)
    assert got.hf_guide_ppl == pytest.approx(got.ppl, rel=1e-12)


@pytest.mark.parametrize("n", [2, 15, 16, 17, 70, 96])
@pytest.mark.parametrize("max_length,stride", PAIRS)
def test_windows_score_each_token_once(n, max_length, stride):
    """Reference: closed form. Scored ranges are disjoint and sorted; n_tokens = n - 1 when windows overlap,
    n - ceil(n / max_length) for disjoint chunks; context never exceeds max_length - 1 tokens."""
    windows = sliding_windows(n, max_length, stride)
    scored = [t for w in windows for t in range(w.first_scored, w.end)]
    assert scored == sorted(set(scored)) and windows[-1].end == n
    expected = n - 1 if stride < max_length else n - math.ceil(n / max_length)
    assert len(scored) == sum(w.n_scored for w in windows) == expected
    assert all(w.end - w.begin <= max_length for w in windows)


def uniform_model(vocab: int = 260) -> llmlab.Transformer:
    """A decoder whose logits are all 0: p = 1/V for every token, so nll = ln V exactly."""
    model = llmlab.Transformer(llmlab.TransformerConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                                        max_seq_len=32))
    torch.nn.init.zeros_(model.lm_head.weight)
    return model.eval()


class CharTokenizer:
    """One token per character: a tokenizer with fewer tokens than bytes on non-ASCII text."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 260 for c in text]


@pytest.mark.parametrize("text,tokenizer,bytes_per_token", [
    ("the quick brown fox jumps over the lazy dog " * 3, ByteTokenizer(), 1),
    ("床前明月光，疑是地上霜。举头望明月，低头思故乡。", ByteTokenizer(), 1),
    ("床前明月光，疑是地上霜。举头望明月，低头思故乡。", CharTokenizer(), 3),
])
def test_bits_per_byte_closed_form(text, tokenizer, bytes_per_token):
    """Reference: closed form. A uniform model over V = 260 ids has ppl = V and log2(V) bits per token; bits per
    byte = bits per token * tokens / bytes (The Pile's BPB): log2(260) for bytes, log2(260) / 3 for CJK characters
    (3 UTF-8 bytes each). float rtol 1e-6."""
    report = evaluate_text(uniform_model(), tokenizer, text, max_length=16, stride=8)
    assert report.perplexity.ppl == pytest.approx(260, rel=1e-6)
    assert report.n_bytes == len(text.encode()) == bytes_per_token * report.perplexity.n_input_tokens
    assert report.bits_per_byte == pytest.approx(math.log2(260) / bytes_per_token, rel=1e-6)
    assert bits_per_byte(8 * math.log(2) * 100, 100) == pytest.approx(8.0, rel=1e-15)


def test_refuses_bad_inputs(models):
    """Reference: none; each mistake is one LlmlabError naming the value."""
    _, ours = models["llama"]
    cases = [({"max_length": 16, "stride": 17}, [1, 2, 3], "stride=17"),
             ({"max_length": 16, "stride": 0}, [1, 2, 3], "stride=0"),
             ({"max_length": 1, "stride": 1}, [1, 2, 3], "max_length=1"),
             ({"max_length": 16, "stride": 8}, [5], "at least 2 tokens"),
             ({"max_length": 16, "stride": 8}, [1, V], f"token id {V}"),
             ({"max_length": 16, "stride": 8, "batch_size": 0}, [1, 2], "batch_size=0")]
    for kwargs, ids, match in cases:
        with pytest.raises(LlmlabError, match=match):
            perplexity(ours, ids, **kwargs)
    encoder = llmlab.Transformer(llmlab.TransformerConfig(arch="encoder", vocab_size=V, d_model=16, n_layers=1,
                                                          n_heads=2, d_ff=32, position="learned"))
    with pytest.raises(LlmlabError, match="causal LM"):
        perplexity(encoder, [1, 2, 3], max_length=4, stride=2)


@pytest.fixture
def run_dir(tmp_path):
    """A tiny llmlab decoder on the byte tokenizer's 260 ids, saved with save_model, and a text file."""
    torch.manual_seed(0)
    model = llmlab.Transformer(llmlab.TransformerConfig(vocab_size=260, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                                        max_seq_len=32))
    llmlab.save_model(model, tmp_path / "run")
    (tmp_path / "poem.txt").write_text("Shall I compare thee to a summer's day?\nThou art more lovely. " * 2)
    return tmp_path


def test_cli_perplexity_prints_the_library_numbers(run_dir):
    """Reference: evaluate_text on the same model and text (the table's 4-decimal values); .jsonl input equals the
    same text joined by blank lines."""
    text = (run_dir / "poem.txt").read_text()
    want = evaluate_text(llmlab.load_model(run_dir / "run"), ByteTokenizer(), text, max_length=32, stride=16)
    result = CliRunner().invoke(app, ["perplexity", str(run_dir / "run"), "--data", str(run_dir / "poem.txt")])
    assert result.exit_code == 0, result.output
    for value in (f"{want.perplexity.ppl:.4f}", f"{want.bits_per_byte:.4f}", "stride 16",
                  f"{want.perplexity.n_tokens:,} / {len(text.encode()):,}"):
        assert value in result.output

    halves = [text[:40], text[40:]]
    (run_dir / "poem.jsonl").write_text("".join(json.dumps({"text": h}) + "\n" for h in halves))
    joined = evaluate_text(llmlab.load_model(run_dir / "run"), ByteTokenizer(), "\n\n".join(halves), max_length=8,
                           stride=8)
    result = CliRunner().invoke(app, ["perplexity", str(run_dir / "run"), "--data", str(run_dir / "poem.jsonl"),
                                      "--max-length", "8", "--stride", "8", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert f"{joined.perplexity.ppl:.4f}" in result.output


def test_cli_uses_the_run_dirs_tokenizer(run_dir):
    """Reference: evaluate_text with the tokenizer saved under MODEL/tokenizer/ (the byte tokenizer's files)."""
    ByteTokenizer().save(run_dir / "run" / "tokenizer")
    result = CliRunner().invoke(app, ["perplexity", str(run_dir / "run"), "--data", str(run_dir / "poem.txt")])
    text = (run_dir / "poem.txt").read_text()
    want = evaluate_text(llmlab.load_model(run_dir / "run"), ByteTokenizer(), text, max_length=32, stride=16)
    assert result.exit_code == 0, result.output
    assert f"{want.perplexity.ppl:.4f}" in result.output


def test_cli_errors_are_one_line(run_dir, models):
    """Reference: none; missing file, a directory, wrong suffix, bad stride, and a model without a usable tokenizer
    each raise one LlmlabError line (main() prints it and exits 2)."""
    model = str(run_dir / "run")
    (run_dir / "data.csv").write_text("a,b\n")
    cases = [(["--data", str(run_dir / "nope.txt")], "no such file"),
             (["--data", str(run_dir)], "is a directory"),
             (["--data", str(run_dir / "data.csv")], "expected a .txt or .jsonl"),
             (["--data", str(run_dir / "poem.txt"), "--stride", "64"], "stride=64"),
             (["--data", str(run_dir / "poem.txt"), "--stride", "0"], "stride=0")]
    for args, match in cases:
        result = CliRunner().invoke(app, ["perplexity", model, *args])
        assert isinstance(result.exception, LlmlabError), result.output
        assert match in str(result.exception) and "\n" not in str(result.exception)
    _, llama = models["llama"]  # vocab 97: not the byte tokenizer's, and no tokenizer files
    llmlab.save_model(llama, run_dir / "v97")
    result = CliRunner().invoke(app, ["perplexity", str(run_dir / "v97"), "--data", str(run_dir / "poem.txt")])
    assert isinstance(result.exception, LlmlabError) and "--tokenizer" in str(result.exception)
