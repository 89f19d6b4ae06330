"""The Porter stemmer (Porter 1980, "An algorithm for suffix stripping"), in the variant nltk's `PorterStemmer()`
runs by default (mode NLTK_EXTENSIONS): the stemmer behind rouge-score's `use_stemmer=True` and nltk's METEOR.

The algorithm, in the paper's terms. A consonant is a letter other than a, e, i, o, u, and other than a y preceded
by a consonant. Writing C for a run of consonants and V for a run of vowels, every word is [C](VC)^m[V]; m is its
*measure*. Five steps strip suffixes in order, each rule "(condition) SUFFIX -> REPLACEMENT"; within a step the
rule with the longest matching suffix is the one tried (the tables below are ordered so the first match is it), and
if its condition fails the step leaves the word alone.

nltk's extensions over the paper (and over Martin Porter's own later versions), all reproduced here:
- a table of irregular forms (skies -> sky, dying -> die, news -> news, ...), looked up first;
- words of 1 or 2 letters are returned as they are;
- step 1a: a 4-letter word in -ies keeps -ie (ties -> tie, but ponies -> poni);
- step 1b: -ied -> -ie for 4-letter words, else -i (died -> die, spied -> spi), before the -eed/-ed/-ing rules;
- step 1b's *o condition also holds for a 2-letter stem vowel+consonant (as in "-at" stems);
- step 1c: y -> i only after a consonant that is not the word's first letter (happy -> happi, enjoy, sky stay);
- step 2: -abli -> -able is replaced by -bli -> -ble; -alli -> -al is tried first and, when it applies, step 2 runs
  again on the result; -fulli -> -ful and -logi -> -log (the l kept in the stem for the measure) are added.
One nltk behaviour is not reproduced: its rule table marks step 1b's double-consonant rule with the suffix "*d", so a
token whose -ed/-ing stem ends in a literal "*d" loses it (nltk: "sa*ded" -> "sad"; here "sa*d"). ROUGE tokens are
a-z0-9 only and never reach it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from itertools import pairwise

_VOWELS = frozenset("aeiou")

# nltk's table of irregular forms: each form on the right stems to the word on the left
_IRREGULAR = {form: stem for stem, forms in {
    "sky": ["sky", "skies"], "die": ["dying"], "lie": ["lying"], "tie": ["tying"], "news": ["news"],
    "inning": ["innings", "inning"], "outing": ["outings", "outing"], "canning": ["cannings", "canning"],
    "howe": ["howe"], "proceed": ["proceed"], "exceed": ["exceed"], "succeed": ["succeed"],
}.items() for form in forms}


def _consonants(word: str) -> list[bool]:
    """Per letter, True for a consonant: y is a consonant at the start or after a vowel, a vowel after a consonant."""
    flags: list[bool] = []
    for i, ch in enumerate(word):
        flags.append(ch not in _VOWELS and (ch != "y" or i == 0 or not flags[i - 1]))
    return flags


def measure(stem: str) -> int:
    """m in [C](VC)^m[V]: the number of vowel-run -> consonant-run transitions."""
    flags = _consonants(stem)
    return sum(1 for a, b in pairwise(flags) if not a and b)


def _has_vowel(stem: str) -> bool:
    return not all(_consonants(stem))


def _ends_double_consonant(word: str) -> bool:
    # *d: the stem ends with a double consonant
    return len(word) >= 2 and word[-1] == word[-2] and _consonants(word)[-1]


def _ends_cvc(word: str) -> bool:
    # *o: the stem ends consonant-vowel-consonant, the last not w, x or y (-wil, -hop); nltk adds 2-letter vc stems
    c = _consonants(word)
    if len(word) >= 3:
        return c[-3] and not c[-2] and c[-1] and word[-1] not in "wxy"
    return len(word) == 2 and not c[0] and c[1]


def _apply_first(word: str, rules: list[tuple[str, str]], condition: Callable[[str], bool]) -> str | None:
    """The first rule whose suffix ends `word`: its replacement when `condition(stem)` holds, else `word` unchanged.
    None when no suffix matches (so a caller can go on to other rules)."""
    for suffix, replacement in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition(stem) else word
    return None


def _m_positive(stem: str) -> bool:
    return measure(stem) > 0


def _step1a(word: str) -> str:
    # SSES -> SS, IES -> I, SS -> SS, S -> ''  (nltk: a 4-letter -ies word keeps -ie)
    if word.endswith("ies") and len(word) == 4:
        return word[:-1]
    out = _apply_first(word, [("sses", "ss"), ("ies", "i"), ("ss", "ss"), ("s", "")], lambda stem: True)
    return word if out is None else out


def _step1b(word: str) -> str:
    # nltk: -ied -> -ie (4 letters) or -i, before the paper's rules
    if word.endswith("ied"):
        return word[:-1] if len(word) == 4 else word[:-2]
    # (m>0) EED -> EE; a word in -eed is never treated as -ed
    if word.endswith("eed"):
        return word[:-1] if measure(word[:-3]) > 0 else word
    # (*v*) ED -> '', (*v*) ING -> '', then tidy the stem so step 4 and 5 see -ate, -ble, -ize and single letters
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
            stem = word[: -len(suffix)]
            break
    else:
        return word
    if stem.endswith(("at", "bl", "iz")):  # AT -> ATE, BL -> BLE, IZ -> IZE
        return stem + "e"
    if _ends_double_consonant(stem):  # (*d and not (*L or *S or *Z)) -> single letter: hopp -> hop, fall stays
        return stem if stem[-1] in "lsz" else stem[:-1]
    if measure(stem) == 1 and _ends_cvc(stem):  # (m=1 and *o) -> E: fil -> file
        return stem + "e"
    return stem


def _step1c(word: str) -> str:
    # nltk: (*c and not a 1-letter stem) Y -> I, where the paper has (*v*) Y -> I
    if word.endswith("y") and len(word) > 2 and _consonants(word[:-1])[-1]:
        return word[:-1] + "i"
    return word


_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
          ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
          ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]


def _step2(word: str) -> str:
    # nltk: (m>0) ALLI -> AL first, then step 2 again on the result (radicalli -> radical)
    if word.endswith("alli") and measure(word[:-4]) > 0:
        return _step2(word[:-2])
    out = _apply_first(word, _STEP2, _m_positive)
    if out is not None:
        return out
    # nltk: LOGI -> LOG with the measure taken on the stem plus its l (so geologi -> geolog)
    if word.endswith("logi"):
        return word[:-1] if measure(word[:-3]) > 0 else word
    return word


_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]

def _step3(word: str) -> str:
    # (m>0) SUFFIX -> REPLACEMENT: triplicate -> triplic, hopeful -> hope, goodness -> good
    out = _apply_first(word, _STEP3, _m_positive)
    return word if out is None else out


_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
          "iti", "ous", "ive", "ize"]


def _step4(word: str) -> str:
    # (m>1) SUFFIX -> ''; ION only after s or t
    for suffix in _STEP4:
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            ok = measure(stem) > 1 and (suffix != "ion" or stem[-1] in "st")
            return stem if ok else word
    return word


def _step5(word: str) -> str:
    # 5a: (m>1) E -> '', (m=1 and not *o) E -> ''   (both conditions are tried: rate stays, cease -> ceas)
    if word.endswith("e"):
        stem = word[:-1]
        m = measure(stem)
        if m > 1 or (m == 1 and not _ends_cvc(stem)):
            word = stem
    # 5b: (m>1 and *d and *L) -> single letter: controll -> control, roll stays
    if word.endswith("ll") and measure(word[:-1]) > 1:
        word = word[:-1]
    return word


@lru_cache(maxsize=2**16)
def porter_stem(word: str) -> str:
    """The Porter stem of `word`, lowercased first, exactly as nltk's `PorterStemmer().stem(word)`."""
    low = word.lower()
    if low in _IRREGULAR:
        return _IRREGULAR[low]
    if len(word) <= 2:  # nltk measures the word as given, before lowercasing
        return low
    out = _step1c(_step1b(_step1a(low)))
    out = _step3(_step2(out))
    return _step5(_step4(out))
