"""`llmlab tokenizer train / encode` (the typer app in llmlab.cli.tokenizer_cmds)."""

from typer.testing import CliRunner

from llmlab.cli.tokenizer_cmds import app
from llmlab.errors import LlmlabError
from llmlab.tokenizer import load_tokenizer

runner = CliRunner()


def test_train_writes_the_files_and_reports(tmp_path):
    out = tmp_path / "tok"
    result = runner.invoke(app, ["train", "--vocab-size", "400", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "tokenizer.tiktoken"}
    assert "bytes/token" in result.output and "training time" in result.output
    tok = load_tokenizer(out)
    assert tok.vocab_size == 400
    result = runner.invoke(app, ["encode", str(out), "--text", "Shall I compare thee<|eos|>"])
    assert result.exit_code == 0 and f"{tok.eos_id}]" in result.output


def test_train_on_input_files_and_user_errors(tmp_path):
    text = tmp_path / "zh.txt"
    text.write_text("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n" * 20, encoding="utf-8")
    result = runner.invoke(app, ["train", "--vocab-size", "300", "--out", str(tmp_path / "t"), "--input", str(text)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t2"), "--input", str(tmp_path / "missing.txt")])
    assert isinstance(result.exception, LlmlabError) and "does not exist" in str(result.exception)
    result = runner.invoke(app, ["train", "--vocab-size", "10", "--out", str(tmp_path / "t3"), "--input", str(text)])
    assert isinstance(result.exception, LlmlabError) and "vocab_size=10" in str(result.exception)


def test_encode_without_tokenizer_is_a_user_error():
    result = runner.invoke(app, ["encode", "nowhere", "--text", "x"])
    assert isinstance(result.exception, LlmlabError) and "no tokenizer.json" in str(result.exception)
