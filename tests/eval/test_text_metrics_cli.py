"""`llmlab eval bleu|rouge|meteor`: --json numbers equal the references on files of real parallel verses (sacrebleu
2.6.0 corpus BLEU and chrF to 1e-9; rouge-score 0.1.2 per-segment `score_multi` averaged, and nltk 3.10.4
`meteor_score` averaged, to 1e-12); tables print; user mistakes are one `error:` line and exit 2."""

import json

import pytest

from llmlab.cli.main import main
from tests.eval.text_pairs import parallel


@pytest.fixture
def files(tmp_path):
    hyps, refs = parallel()
    second = [" ".join(r.split()[::-1]) for r in refs]
    paths = {}
    for name, lines in [("pred", hyps), ("ref", refs), ("ref2", second), ("short", refs[:-1])]:
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths, hyps, [refs, second]


def run_json(capsys, *args) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bleu_json_equals_sacrebleu(files, capsys):
    sacrebleu = pytest.importorskip("sacrebleu")
    paths, hyps, refs = files
    got = run_json(capsys, "bleu", "--pred", str(paths["pred"]), "--ref", str(paths["ref"]), "--ref",
                   str(paths["ref2"]), "--lowercase")
    want = sacrebleu.metrics.BLEU(lowercase=True).corpus_score(hyps, refs)
    assert got["bleu"] == pytest.approx(want.score, abs=1e-9)
    assert got["precisions"] == pytest.approx(want.precisions, abs=1e-9)
    assert (got["counts"], got["totals"], got["sys_len"], got["ref_len"]) == (
        want.counts, want.totals, want.sys_len, want.ref_len)
    assert got["chrf"] == pytest.approx(sacrebleu.metrics.CHRF(lowercase=True).corpus_score(hyps, refs).score,
                                        abs=1e-9)


def test_rouge_json_equals_rouge_score_mean(files, capsys):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    paths, hyps, refs = files
    got = run_json(capsys, "rouge", "--pred", str(paths["pred"]), "--ref", str(paths["ref"]), "--ref",
                   str(paths["ref2"]), "--stemmer")["scores"]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    per = [scorer.score_multi([a, b], h) for h, a, b in zip(hyps, *refs, strict=True)]
    for k in types:
        for field in ("precision", "recall", "fmeasure"):
            want = sum(getattr(s[k], field) for s in per) / len(per)
            assert got[k][field] == pytest.approx(want, abs=1e-12)


def test_rouge_sentence_separator_feeds_rougelsum(tmp_path, capsys):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    pred, ref = tmp_path / "p.txt", tmp_path / "r.txt"
    pred.write_text("the cat sat <n> on the mat\n", encoding="utf-8")
    ref.write_text("on the mat <n> the cat sat down\n", encoding="utf-8")
    got = run_json(capsys, "rouge", "--pred", str(pred), "--ref", str(ref), "--sentence-sep", "<n>")["scores"]
    want = rouge_scorer.RougeScorer(["rougeLsum"]).score("on the mat \n the cat sat down", "the cat sat \n on the mat")
    assert got["rougeLsum"]["fmeasure"] == pytest.approx(want["rougeLsum"].fmeasure, abs=1e-12)


def test_meteor_json_equals_nltk_mean(files, capsys):
    ms = pytest.importorskip("nltk.translate.meteor_score")
    from llmlab.eval.meteor import SynonymTable

    paths, hyps, refs = files
    got = run_json(capsys, "meteor", "--pred", str(paths["pred"]), "--ref", str(paths["ref"]))
    want = [ms.meteor_score([r.split()], h.split(), wordnet=SynonymTable({})) for h, r in zip(hyps, refs[0],
                                                                                             strict=True)]
    assert got["meteor"] == pytest.approx(sum(want) / len(want), abs=1e-12)


def test_tables_print(files, capsys):
    paths, _, _ = files
    for metric, expect in [("bleu", "brevity penalty"), ("rouge", "rougeLsum"), ("meteor", "METEOR")]:
        assert main(["eval", metric, "--pred", str(paths["pred"]), "--ref", str(paths["ref"])]) == 0
        assert expect in capsys.readouterr().out


@pytest.mark.parametrize("metric", ["bleu", "rouge", "meteor"])
def test_line_count_mismatch_and_missing_file_are_one_line(files, capsys, metric):
    paths, _, _ = files
    assert main(["eval", metric, "--pred", str(paths["pred"]), "--ref", str(paths["short"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "42 lines" in err and "43" in err and "\n" not in err
    assert main(["eval", metric, "--pred", str(paths["pred"].with_name("nope.txt")), "--ref", str(paths["ref"])]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_tokenizer_is_one_line(files, capsys):
    paths, _, _ = files
    assert main(["eval", "bleu", "--pred", str(paths["pred"]), "--ref", str(paths["ref"]), "--tokenize", "intl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tokenize intl" in err and "\n" not in err


def test_wordnet_without_its_data_says_how_to_get_it(files, capsys):
    wordnet = pytest.importorskip("nltk.corpus").wordnet
    try:
        wordnet.synsets("dog")
        pytest.skip("WordNet data is installed here")
    except LookupError:
        pass
    paths, _, _ = files
    assert main(["eval", "meteor", "--pred", str(paths["pred"]), "--ref", str(paths["ref"]), "--wordnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nltk.download('wordnet')" in err and "\n" not in err
