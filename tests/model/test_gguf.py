"""llmlab.model.gguf against gguf-py (`gguf` on PyPI, the GGUF library of llama.cpp's repository): its GGUFReader reads
every key, type and tensor of our files, its GGUFWriter writes our files' exact bytes, our reader reads its files,
and our Q8_0 bytes equal gguf.quants'. Loading our export gives bit-identical logits (F32) or exactly those of the
rounded weights (F16, BF16, Q8_0); the Q/K permutation is convert_hf_to_gguf.py's and keeps attention scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import llmlab
from llmlab.errors import LlmlabError
from llmlab.model.config import RopeScaling, TransformerConfig
from llmlab.model.gguf import (
    GGUFFile,
    TensorType,
    Value,
    ValueType,
    export_gguf,
    load_gguf_tokenizer,
    model_to_gguf,
    read_gguf,
    write_gguf,
)
from llmlab.model.gguf.arch import permute_rope, unpermute_rope
from llmlab.model.gguf.quants import encode
from llmlab.model.gguf.vocab import CONTROL, NORMAL, UNUSED
from llmlab.model.hf.checkpoint import CHATML_JINJA
from llmlab.model.positions import RotaryEmbedding, apply_rope
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import ByteTokenizer, Tokenizer, train_tokenizer
from tests.model.hf_helpers import randomise_

gguf = pytest.importorskip("gguf")

TEXT = "The quick brown fox jumps over the lazy dog. 床前明月光，疑是地上霜。 " * 20
SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 96, "max_seq_len": 64}  # rows of 64: Q8_0 blocks fit
CONFIGS = {  # one per llama.cpp architecture, with the optional parts each allows
    "llama": dict(n_kv_heads=2, head_dim=32, qkv_bias=True, out_bias=True, mlp_bias=True, rope_theta=500000.0,
                  rope_scaling=RopeScaling("linear", 2.0), norm_eps=1e-6),
    "qwen2": dict(n_kv_heads=2, qkv_bias=True, tie_embeddings=True),
    "gpt2": dict(position="learned", norm="layernorm", activation="gelu_tanh", gated_mlp=False, qkv_bias=True,
                 out_bias=True, mlp_bias=True, tie_embeddings=True),
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXT, 320)


def make_run(tmp_path, tok, arch: str = "llama", vocab_size: int | None = None):
    cfg = TransformerConfig(vocab_size=vocab_size or tok.vocab_size, **SMALL, **CONFIGS[arch])
    model = randomise_(Transformer(cfg))
    run = llmlab.save_model(model, tmp_path / f"run_{arch}")
    tok.save(run / "tokenizer")
    return model, run


def logits(model, seed: int = 0) -> torch.Tensor:
    x = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


# ----------------------------------------------------------------------------------------- file format vs gguf-py
def reader_types(v: Value) -> list:
    return [v.type] if v.type != ValueType.ARRAY else [v.type] + ([v.item_type] if v.value else [])


def plain(v: Value):
    """What gguf-py's ReaderField.contents() returns: FLOAT32 values rounded to float32."""
    def item(t, x):
        return float(np.float32(x)) if t == ValueType.FLOAT32 else x
    return [item(v.item_type, x) for x in v.value] if v.type == ValueType.ARRAY else item(v.type, v.value)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_gguf_reader_reads_our_file(tmp_path, tok, dtype):
    """Reference: gguf.GGUFReader on our file: every key with its value type (and item type), every value, every
    tensor's name, ggml dims (reversed PyTorch shape), ggml type, data offset alignment and bytes."""
    model, run = make_run(tmp_path, tok)
    md, tensors = model_to_gguf(model, tok, dtype, "tiny", CHATML_JINJA)
    path = write_gguf(tmp_path / "m.gguf", md, tensors)
    r = gguf.GGUFReader(path)
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(md)
    for key, v in md.items():
        assert fields[key].types == reader_types(v), key
        assert fields[key].contents() == plain(v), key
    assert r.alignment == 32 and r.data_offset % 32 == 0
    assert [t.name for t in r.tensors] == [t.name for t in tensors]
    for rt, t in zip(r.tensors, tensors, strict=True):
        assert list(rt.shape) == list(reversed(t.shape)) and rt.tensor_type == t.type, t.name
        assert (rt.data_offset - r.data_offset) % 32 == 0
        assert rt.data.tobytes() == t.data.tobytes(), t.name
    # the matrices take the dtype, 1-D tensors stay F32 (convert_hf_to_gguf.py)
    types = {t.name: t.type for t in tensors}
    assert types["blk.0.attn_q.weight"] == TensorType[dtype.upper()] and types["blk.0.attn_norm.weight"] == 0
    state = model.state_dict()
    if dtype == "f32":
        emb = next(rt for rt in r.tensors if rt.name == "token_embd.weight")
        assert np.array_equal(emb.data, state["tok_emb.weight"].numpy())


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_ggufwriter_writes_our_bytes(tmp_path, tok, dtype):
    """Reference: gguf.GGUFWriter given our keys (value types included) and encoded tensors, in our order, writes a
    file byte-identical to ours: header, metadata, tensor infos, offsets and padding agree."""
    model, _ = make_run(tmp_path, tok)
    md, tensors = model_to_gguf(model, tok, dtype, "tiny", CHATML_JINJA)
    ours = write_gguf(tmp_path / "ours.gguf", md, tensors).read_bytes()
    w = gguf.GGUFWriter(tmp_path / "ref.gguf", md["general.architecture"].value)
    for key, v in md.items():
        w.add_key_value(key, v.value, gguf.GGUFValueType(v.type),
                        sub_type=None if v.item_type is None else gguf.GGUFValueType(v.item_type))
    for t in tensors:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.type)]
        byte_shape = (*t.shape[:-1], t.shape[-1] // block * size)
        w.add_tensor(t.name, t.data.reshape(byte_shape), raw_dtype=gguf.GGMLQuantizationType(t.type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert (tmp_path / "ref.gguf").read_bytes() == ours


def test_our_reader_reads_ggufwriter_file(tmp_path):
    """Reference: a file gguf.GGUFWriter writes with every value type, arrays (strings, numbers, bools, nested) and
    tensors F32 (3-D), F16, BF16, Q8_0 and I32: our reader gives the same values, types, shapes and data."""
    G, Q = gguf.GGUFValueType, gguf.GGMLQuantizationType
    scalars = {"u8": (200, G.UINT8), "i8": (-100, G.INT8), "u16": (60000, G.UINT16), "i16": (-30000, G.INT16),
               "u32": (4_000_000_000, G.UINT32), "i32": (-2_000_000_000, G.INT32), "f32": (0.1, G.FLOAT32),
               "b": (True, G.BOOL), "s": ("héllo 世界 🙂", G.STRING), "u64": (2**63 + 5, G.UINT64),
               "i64": (-(2**62), G.INT64), "f64": (0.1, G.FLOAT64)}
    arrays = {"a_str": (["a", "", "Ġthe", "<|im_end|>"], G.STRING), "a_i32": ([1, -2, 3], G.INT32),
              "a_f32": ([0.5, -1.25], G.FLOAT32), "a_bool": ([True, False, True], G.BOOL),
              "a_u8": ([0, 255], G.UINT8)}
    g = torch.Generator().manual_seed(0)
    x3, x2 = torch.randn(2, 3, 64, generator=g), torch.randn(4, 64, generator=g)
    w = gguf.GGUFWriter(tmp_path / "ref.gguf", "llama")
    w.add_custom_alignment(64)
    for k, (v, t) in scalars.items():
        w.add_key_value(k, v, t)
    for k, (v, t) in arrays.items():
        w.add_key_value(k, v, G.ARRAY, sub_type=t)
    w.add_array("nested", [[1, 2], [3]])
    w.add_tensor("f32", x3.numpy())
    w.add_tensor("f16", x2.numpy().astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(x2.numpy(), Q.BF16), raw_dtype=Q.BF16)
    w.add_tensor("q8_0", gguf.quants.quantize(x2.numpy(), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("i32", np.arange(-5, 7, dtype=np.int32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f: GGUFFile = read_gguf(tmp_path / "ref.gguf")
    assert f.version == 3 and f.alignment == 64 and f.metadata["general.alignment"] == Value.u32(64)
    assert f.metadata["general.architecture"] == Value.string("llama")
    for k, (v, t) in scalars.items():
        want = float(np.float32(v)) if t == G.FLOAT32 else v
        assert (f.metadata[k].type, f.metadata[k].value) == (t, want), k
    for k, (v, t) in arrays.items():
        want = [float(np.float32(x)) for x in v] if t == G.FLOAT32 else v
        assert f.metadata[k] == Value(ValueType.ARRAY, want, ValueType(t)), k
    nested = f.metadata["nested"]
    assert nested.item_type == ValueType.ARRAY and [n.value for n in nested.value] == [[1, 2], [3]]
    from llmlab.model.gguf.quants import decode
    t = f.tensors
    assert [(n, t[n].shape, t[n].type) for n in t] == [("f32", (2, 3, 64), 0), ("f16", (4, 64), 1),
                                                       ("bf16", (4, 64), 30), ("q8_0", (4, 64), 8), ("i32", (3, 4), 26)]
    assert torch.equal(decode(t["f32"].data, t["f32"].type, t["f32"].shape), x3)
    assert torch.equal(decode(t["f16"].data, t["f16"].type, (4, 64)), x2.half().float())
    assert torch.equal(decode(t["bf16"].data, t["bf16"].type, (4, 64)), x2.bfloat16().float())
    ref_q8 = gguf.quants.dequantize(gguf.quants.quantize(x2.numpy(), Q.Q8_0), Q.Q8_0)
    assert np.array_equal(decode(t["q8_0"].data, t["q8_0"].type, (4, 64)).numpy(), ref_q8)
    assert torch.equal(decode(t["i32"].data, t["i32"].type, (3, 4)), torch.arange(-5, 7).reshape(3, 4).float())


def test_q8_0_bytes_equal_gguf_quants():
    """Reference: gguf.quants.quantize / dequantize for Q8_0 (bit-exact with ggml-quants.c, gguf-py says): the same
    bytes and the same dequantized floats, on random rows and on blocks of zeros, exact halves (roundf ties) and
    tiny, huge and negative values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=g) * torch.logspace(-6, 4, 16)[:, None]
    x[0, :32] = 0
    x[1, :32] = torch.cat([torch.tensor([127.0]), torch.arange(-15, 16) + 0.5]) / 128  # d = 1/128: x / d = k + 0.5
    x[2, :32] = -x[1, :32]
    x[3, :32] = torch.linspace(-1, 1, 32)
    Q = gguf.GGMLQuantizationType.Q8_0
    ours = encode(x, TensorType.Q8_0)
    ref = gguf.quants.quantize(x.numpy(), Q)
    assert ours.tobytes() == ref.tobytes()
    from llmlab.model.gguf.quants import decode
    assert np.array_equal(decode(ours, TensorType.Q8_0, (16, 128)).numpy(), gguf.quants.dequantize(ref, Q))
    for tt, q in ((TensorType.F16, gguf.GGMLQuantizationType.F16), (TensorType.BF16, gguf.GGMLQuantizationType.BF16)):
        assert encode(x, tt).tobytes() == gguf.quants.quantize(x.numpy(), q).tobytes()


# ------------------------------------------------------------------------------------------------ the model round trip
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_f32_round_trip_bit_identical(tmp_path, tok, arch):
    """load_model(export.gguf) has the source's config and bit-identical logits (F32: Q/K permuted and back, q/k/v
    fused and split, tied heads omitted and restored)."""
    model, run = make_run(tmp_path, tok, arch)
    done = export_gguf(run, tmp_path / "m.gguf", "f32")
    assert done.arch == arch and done.n_bytes == done.path.stat().st_size
    back = llmlab.load_model(done.path)
    assert back.cfg == model.cfg
    assert torch.equal(logits(back), logits(model))
    names = set(read_gguf(done.path).tensors)
    assert ("output.weight" in names) == (not model.cfg.tie_embeddings)
    assert ("blk.0.attn_qkv.weight" in names) == (arch == "gpt2")


def rounded(model: Transformer, rnd) -> Transformer:
    """A copy of model with every matrix passed through rnd (what a GGUF of that dtype stores); 1-D tensors kept."""
    copy = Transformer(model.cfg)
    state = {k: rnd(v) if v.dim() == 2 and k != "pos_emb.weight" else v for k, v in model.state_dict().items()}
    copy.load_state_dict(state)
    return copy.eval()


def q8_0_ref(w: torch.Tensor) -> torch.Tensor:
    Q = gguf.GGMLQuantizationType.Q8_0
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), Q), Q)).reshape(w.shape)


@pytest.mark.parametrize(("dtype", "rnd", "tol"), [("f16", lambda w: w.half().float(), 1e-2),
                                                   ("bf16", lambda w: w.bfloat16().float(), 5e-2),
                                                   ("q8_0", q8_0_ref, 1e-1)])
def test_low_precision_logits_equal_rounded_source(tmp_path, tok, dtype, rnd, tol):
    """F16 / BF16 / Q8_0 exports: logits bit-identical to the source with its matrices rounded to that dtype
    (Q8_0 by gguf.quants' quantize + dequantize), and near the source's own (max |diff| < tol)."""
    model, run = make_run(tmp_path, tok)
    back = llmlab.load_model(export_gguf(run, tmp_path / "m.gguf", dtype).path)
    assert torch.equal(logits(back), logits(rounded(model, rnd)))
    assert (logits(back) - logits(model)).abs().max() < tol


def test_permute_is_convert_hf_to_gguf_and_keeps_attention_scores():
    """Reference: convert_hf_to_gguf.py's LlamaModel.permute (verbatim below) for weights and biases, GQA included;
    unpermute inverts it. Scores q.k with llmlab's rotate-half RoPE on the original rows equal scores with ggml's
    normal RoPE (adjacent pairs (2i, 2i+1), angle pos * theta^(-2i/D)) on the permuted rows: llama.cpp's llama."""
    def reference_permute(weights, n_head: int, n_head_kv: int | None):  # llama.cpp convert_hf_to_gguf.py
        if n_head_kv is not None and n_head != n_head_kv:
            n_head = n_head_kv
        return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
                .swapaxes(1, 2)
                .reshape(weights.shape))

    H, KV, D, d_model, T = 4, 2, 16, 32, 10
    g = torch.Generator().manual_seed(0)
    wq, wk, bq = torch.randn(H * D, d_model, generator=g), torch.randn(KV * D, d_model, generator=g), torch.randn(H * D)
    assert torch.equal(permute_rope(wq, H), reference_permute(wq, H, H))
    assert torch.equal(permute_rope(wk, KV), reference_permute(wk, H, KV))
    assert torch.equal(permute_rope(bq, H), reference_permute(bq, H, H))
    assert torch.equal(unpermute_rope(permute_rope(wk, KV), KV), wk)

    x, wk_mha = torch.randn(T, d_model, generator=g), torch.randn(H * D, d_model, generator=g)
    cos, sin = RotaryEmbedding(D, 10000.0)(torch.arange(T)[None])

    def heads(w):  # (1, H, T, D)
        return (x @ w.T).view(1, T, H, D).transpose(1, 2)

    def ggml_rope_norm(v):  # pairs (2i, 2i+1) turned by pos * theta^(-2i/D)  (ggml-cpu ops.cpp rope_f32, mode 0)
        angle = torch.arange(T)[:, None].float() * 10000.0 ** (-torch.arange(0, D, 2).float() / D)  # (T, D/2)
        x0, x1 = v[..., 0::2], v[..., 1::2]
        return torch.stack((x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()), -1).flatten(-2)

    ours = apply_rope(heads(wq), cos, sin) @ apply_rope(heads(wk_mha), cos, sin).transpose(-1, -2)
    ggml = ggml_rope_norm(heads(permute_rope(wq, H))) @ ggml_rope_norm(heads(permute_rope(wk_mha, H))).transpose(-1, -2)
    torch.testing.assert_close(ggml, ours, atol=1e-4, rtol=1e-5)
    unpermuted = ggml_rope_norm(heads(wq)) @ ggml_rope_norm(heads(wk_mha)).transpose(-1, -2)
    assert not torch.allclose(unpermuted, ours, atol=1e-2)  # without the permutation llama.cpp would be wrong


# --------------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_metadata(tmp_path, tok):
    """tokenizer.ggml.*: tokens and merges exactly tokenizer.json's (byte-level strings), token types (normal /
    control / unused padding ids), bos/eos/pad ids, add_bos false, ChatML as the chat template; llmlab's own BPE
    rebuilt from the GGUF tokens + merges encodes text (special tokens included) to the same ids."""
    _, run = make_run(tmp_path, tok, vocab_size=tok.vocab_size + 3)  # 3 ids the tokenizer does not use
    md = read_gguf(export_gguf(run, tmp_path / "m.gguf", "f16").path).metadata
    tj = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tj["model"]["vocab"].items()}
    tokens, types = md["tokenizer.ggml.tokens"].value, md["tokenizer.ggml.token_type"].value
    n = tok.vocab_size
    assert tokens[:n] == [vocab[i] for i in range(n)]
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 3)] and types[n:] == [UNUSED] * 3
    assert [i for i, k in enumerate(types) if k == CONTROL] == sorted(tok.special_tokens.values())
    assert types[:256] == [NORMAL] * 256
    assert md["tokenizer.ggml.merges"].value == [" ".join(m) for m in tj["model"]["merges"]]
    assert (md["tokenizer.ggml.model"].value, md["tokenizer.ggml.pre"].value) == ("gpt2", "llama-bpe")
    # bos is the sequence start: an llmlab run's documents start after eos (tokenizer.sequence_start_id)
    assert [md[f"tokenizer.ggml.{k}_token_id"].value for k in ("bos", "eos", "padding")] == \
        [tok.eos_id, tok.eos_id, tok.pad_id]
    assert md["tokenizer.ggml.add_bos_token"] == Value.boolean(False)
    assert md["tokenizer.chat_template"].value == CHATML_JINJA

    text = TEXT[:150] + "<|im_start|>user\nhi 123456 <|im_end|>\n\n  x"
    want = tok.encode(text, allowed_special="all")
    assert load_gguf_tokenizer(tmp_path / "m.gguf").encode(text, allowed_special="all") == want
    from llmlab.tokenizer.hf_json import str_to_token
    merges = [tuple(str_to_token(s, "gguf") for s in m.split(" ")) for m in md["tokenizer.ggml.merges"].value]
    specials = [tokens[i] for i, k in enumerate(types) if k == CONTROL]
    rebuilt = Tokenizer.from_merges(merges, "gpt4", specials, backend="ours")
    assert rebuilt.encode(text, allowed_special="all") == want


def test_byte_tokenizer_model(tmp_path):
    """A run dir without tokenizer/ whose vocab is the byte tokenizer's: 256 byte tokens, no merges (the key is still
    written: llama.cpp requires it), the specials as control tokens; the tokenizer read back encodes alike."""
    cfg = TransformerConfig(vocab_size=ByteTokenizer().vocab_size, **SMALL)
    run = llmlab.save_model(Transformer(cfg), tmp_path / "run")
    md = read_gguf(export_gguf(run, tmp_path / "m.gguf").path).metadata
    assert md["tokenizer.ggml.merges"] == Value.array(ValueType.STRING, [])
    assert "tokenizer.chat_template" not in md  # no ChatML tokens, no template of its own
    text = "héllo <|eos|>"
    assert load_gguf_tokenizer(tmp_path / "m.gguf").encode(text, "all") == ByteTokenizer().encode(text, "all")


# ------------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("change", "needle"), [
    ({"arch": "encoder"}, "arch='encoder'"),
    ({"n_experts": 4}, "n_experts=4"),
    ({"position": "alibi"}, "position='alibi'"),
    ({"sliding_window": 16}, "sliding_window=16"),
    ({"activation": "gelu"}, "activation='gelu'"),
    ({"rope_scaling": RopeScaling("yarn", 2.0, original_max_seq_len=32)}, "rope_scaling.kind='yarn'"),
])
def test_unsupported_config_is_one_line(tmp_path, change, needle):
    cfg = TransformerConfig(vocab_size=260, **{**SMALL, **change})
    run = llmlab.save_model(Transformer(cfg), tmp_path / "run")
    with pytest.raises(LlmlabError) as e:
        export_gguf(run, tmp_path / "m.gguf")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m.gguf").exists()


def test_bad_files_are_one_line(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML not gguf")
    with pytest.raises(LlmlabError, match="not a GGUF file"):
        llmlab.load_model(tmp_path / "x.gguf")
    md = {"general.architecture": Value.string("mamba")}
    write_gguf(tmp_path / "y.gguf", md, [])
    with pytest.raises(LlmlabError, match="general.architecture='mamba'"):
        llmlab.load_model(tmp_path / "y.gguf")
    (tmp_path / "z.gguf").write_bytes((tmp_path / "y.gguf").read_bytes()[:30])
    with pytest.raises(LlmlabError, match="truncated"):
        read_gguf(tmp_path / "z.gguf")


# ------------------------------------------------------------------------------------------------ llama.cpp itself
@pytest.mark.slow
@pytest.mark.parametrize(("arch", "dtype", "atol"), [
    ("llama", "f32", 1e-4), ("qwen2", "f32", 1e-4), ("gpt2", "f32", 5e-3),
    ("llama", "f16", 1e-2), ("llama", "bf16", 5e-2), ("llama", "q8_0", 1e-1)])
def test_llama_cpp_runs_our_file(tmp_path, tok, arch, dtype, atol):
    """Reference: llama.cpp (llama-cpp-python 0.3.36, built from source) loads our file: its tokenizer gives our ids
    (special tokens included), its bos (our sequence start: eos) and eos are ours, and its logits equal those of our
    model loaded from the same file. F32 with an F32 KV cache: 1e-4 (llama, qwen2: GQA, biases, head_dim !=
    d_model / n_heads, linear RoPE scaling); gpt2 5e-3, as ggml's CPU GELU reads an fp16 table. F16 / BF16 / Q8_0:
    llama.cpp's CPU matmul also rounds the activations to the weights' type (F16, BF16, Q8_0), hence the looser
    bounds."""
    llama_cpp = pytest.importorskip("llama_cpp")
    _, run = make_run(tmp_path, tok, arch)
    path = export_gguf(run, tmp_path / "m.gguf", dtype).path
    text = TEXT[:120] + "<|im_start|>user\nhi 12345<|im_end|>\n"
    ids = tok.encode(text, allowed_special="all")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        assert (llm.token_bos(), llm.token_eos()) == (tok.eos_id, tok.eos_id)  # bos: the run's sequence start
        llm.eval(ids)
        theirs = torch.tensor(np.array(llm.scores[:len(ids)]))
    finally:
        llm.close()
    with torch.no_grad():
        ours = llmlab.load_model(path)(torch.tensor([ids]))[0]
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
