"""SFT: assistant-only labels, batching/packing, the masked loss against TRL 1.16, and a short training run.

Reference: `trl.SFTTrainer(assistant_only_loss=True)` (trl 1.16, transformers 5.24) on a random-weight HF Llama built
from a config and an HF fast tokenizer made from our tokenizer.json, with a ChatML template whose
`{% generation %}` block holds `content + '<|im_end|>'`. Its collated batch must equal ours token for token and
label for label, and `SFTTrainer.compute_loss` on it must equal `sft_loss` on our weight-copied model (fp32, 1e-5).
"""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

import llmlab
from llmlab.cli.posttrain_cmds import sft as sft_command
from llmlab.data.samples import sample_text
from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import ChatTemplate, render
from llmlab.model.config import TransformerConfig
from llmlab.posttrain.chat_data import make_sft_set, write_set
from llmlab.posttrain.sft import (
    IGNORE,
    collate,
    held_out_accuracy,
    pack,
    segment_mask,
    sft_loss,
    tokenize_chat,
    train_sft,
)
from llmlab.tokenizer import ByteTokenizer, train_tokenizer

V = 320
# ChatML with TRL's generation markers around what we train: the assistant content and its <|im_end|>
TRAINING_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"},
                {"role": "assistant", "content": "It is 8."}]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(sample_text(), V)


def trained_text(tokenizer, ids, labels) -> list[str]:
    """The trained tokens, decoded, one string per contiguous run."""
    runs, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    return runs + ([tokenizer.decode(cur)] if cur else [])


def test_labels_are_assistant_content_and_end_of_turn(tok):
    ids, labels = tokenize_chat(CONVERSATION, tok)
    assert tok.decode(ids) == render(CONVERSATION, add_generation_prompt=False)
    assert trained_text(tok, ids, labels) == ["5<|im_end|>", "It is 8.<|im_end|>"]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))
    # the same spans through an HF Jinja template (our renderer passes {% generation %} through)
    assert tokenize_chat(CONVERSATION, tok, ChatTemplate(TRAINING_TEMPLATE)) == (ids, labels)
    # the byte tokenizer spells <|im_end|> as text: still the assistant's bytes and the closing marker
    bids, blabels = tokenize_chat(CONVERSATION[1:3], ByteTokenizer())
    assert trained_text(ByteTokenizer(), bids, blabels) == ["5<|im_end|>"]


def test_truncation_keeps_the_start_and_a_non_prefix_template_is_refused(tok):
    ids, labels = tokenize_chat(CONVERSATION, tok, max_len=10)
    assert len(ids) == len(labels) == 10 and all(lab == IGNORE for lab in labels)
    odd = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}")
    with pytest.raises(LlmlabError, match="prefix"):
        tokenize_chat(CONVERSATION, tok, odd)


def test_collate_pads_right_and_masks_padding():
    batch = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [IGNORE])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pack_restarts_positions_and_masks_across_examples():
    rows = [([1, 2, 3, 4], [1, 2, 3, 4]), ([5, 6], [5, 6]), ([7, 8, 9], [7, 8, 9]), ([10], [10])]
    p = pack(rows, max_len=5, pad_id=0)
    assert p["input_ids"].tolist() == [[1, 2, 3, 4, 10], [7, 8, 9, 5, 6]]  # best fit, longest first
    assert p["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert p["segment_ids"].tolist() == [[1, 1, 1, 1, 2], [1, 1, 1, 2, 2]]
    assert p["labels"].tolist() == [[IGNORE, 2, 3, 4, IGNORE], [IGNORE, 8, 9, IGNORE, 6]]
    m = segment_mask(torch.tensor([[1, 1, 2, 2, 0]]))[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    with pytest.raises(LlmlabError, match="does not fit"):
        pack(rows, max_len=3, pad_id=0)


def tiny_model(seed: int = 0, max_seq_len: int = 128) -> llmlab.Transformer:
    torch.manual_seed(seed)
    return llmlab.Transformer(TransformerConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                                max_seq_len=max_seq_len))


def test_packed_rows_give_the_loss_of_separate_rows(tok):
    model = tiny_model().eval()
    rows = [tokenize_chat(ex["messages"], tok) for ex in make_sft_set(6, seed=0)]
    batch = pack(rows, max_len=128, pad_id=tok.pad_id)
    # packing masks each example's first label; so does the reference here, for the same token set
    separate = collate([(ids, [IGNORE] + lab[1:]) for ids, lab in rows], tok.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(sft_loss(model, batch), sft_loss(model, separate))


def test_sft_loss_equals_trl_sft_trainer(tok, tmp_path):
    tf = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    tf.logging.set_verbosity_error()
    tok.save(tmp_path / "tok")
    hf_tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"),
                                        pad_token="<|pad|>", eos_token="<|im_end|>")
    hf_tok.chat_template = TRAINING_TEMPLATE
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "eager"
    hf = tf.LlamaForCausalLM(cfg)
    hf.save_pretrained(tmp_path / "hf")
    examples = [{"messages": ex["messages"]} for ex in make_sft_set(9, seed=0)] + [{"messages": CONVERSATION}]
    for ex in examples:
        assert hf_tok.apply_chat_template(ex["messages"], tokenize=False) == render(ex["messages"], False)
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, report_to=[], use_cpu=True,
                         max_length=None, per_device_train_batch_size=len(examples))
    trainer = trl.SFTTrainer(model=hf, args=args, train_dataset=Dataset.from_list(examples), processing_class=hf_tok)
    ref = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    ours = collate([tokenize_chat(ex["messages"], tok) for ex in examples], tok.pad_id)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(ours[key], ref[key]), key
    hf.eval()
    with torch.no_grad():
        expected = trainer.compute_loss(hf, dict(ref))
        got = sft_loss(llmlab.load_model(tmp_path / "hf"), ours)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def run(tok, tmp_path_factory):
    """A tiny run dir, a generated set (train + val) and one short full fine-tune of it."""
    root = tmp_path_factory.mktemp("sft")
    base = root / "base"
    llmlab.save_model(tiny_model(), base)
    tok.save(base / "tokenizer")
    write_set(root / "data", "sft", 240, seed=0, tasks=["add", "sub", "upper"], val_fraction=0.1)
    result = train_sft(base, root / "data", root / "out", steps=60, lr=3e-3, batch_size=8, accuracy_examples=12,
                       max_new_tokens=6)
    return root, result


def test_short_sft_lowers_held_out_loss(run):
    root, r = run
    assert r.val_examples == 24 and r.train_examples == 216 and r.skipped == r.dropped == 0
    assert r.val_loss_after < r.val_loss_before - 0.5, (r.val_loss_before, r.val_loss_after)
    print(f"val loss {r.val_loss_before:.3f} -> {r.val_loss_after:.3f}; accuracy "
          f"{r.accuracy_before['accuracy']:.2f} -> {r.accuracy_after['accuracy']:.2f} (reported, not asserted)")
    out = root / "out"
    assert (out / "model_config.json").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    metrics = json.loads((out / "sft_metrics.json").read_text())
    assert metrics["val_loss_after"] == pytest.approx(r.val_loss_after)
    val = [json.loads(line) for line in (root / "data" / "val.jsonl").read_text().splitlines()][:12]
    acc = held_out_accuracy(out, val, max_new_tokens=6)
    assert acc["n"] == 12 and acc["accuracy"] == pytest.approx(r.accuracy_after["accuracy"])


def test_lora_sft_trains_only_adapters_and_saves_merged_weights(run):
    root, _ = run
    r = train_sft(root / "base", root / "data", root / "lora", steps=8, lr=1e-2, batch_size=4, lora=True, lora_r=4)
    assert r.trainable_params < r.total_params / 5 and r.val_loss_after < r.val_loss_before
    merged = llmlab.load_model(root / "lora")  # plain weights: the adapters are folded in
    assert not any("lora" in name for name in merged.state_dict())


def test_bad_data_stops_or_is_skipped(run, tmp_path):
    root, _ = run
    data = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    data.write_text(good + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(LlmlabError, match=r"d\.jsonl:2: .*unknown role 'robot'"):
        train_sft(root / "base", data, tmp_path / "o", steps=1)
    r = train_sft(root / "base", data, tmp_path / "o", steps=1, on_error="skip")
    assert r.skipped == 1 and r.train_examples == 1
    packed = train_sft(root / "base", data, tmp_path / "p", steps=1, packing=True, on_error="skip")
    assert packed.train_examples == 1


def test_cli_sft(run, tmp_path):
    root, _ = run
    app = typer.Typer()
    app.command("sft")(sft_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    r = CliRunner().invoke(app, ["sft", str(root / "base"), "--data", str(root / "data"), "--out",
                                 str(tmp_path / "o"), "--steps", "2", "--batch-size", "2", "--lora"])
    assert r.exit_code == 0, r.output
    assert "val loss" in r.output and (tmp_path / "o" / "model.safetensors").is_file()
