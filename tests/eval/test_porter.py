"""The Porter stemmer against nltk 3.10.4's `PorterStemmer()` (mode NLTK_EXTENSIONS, the one rouge-score and nltk's
METEOR use): identical stems for every word of the English sample, the paper's examples and seeded random words
built from the algorithm's suffixes."""

import random
import re

import pytest

from llmlab.eval.porter import measure, porter_stem
from tests.eval.text_pairs import documents

PorterStemmer = pytest.importorskip("nltk.stem.porter").PorterStemmer

# Porter (1980)'s examples, step by step, and nltk's irregular forms and extensions
PAPER = """caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping
tanned falling hissing fizzed failing filing happy sky relational conditional rational valenci hesitanci digitizer
conformabli radicalli differentli vileli analogousli vietnamization predication operator feudalism decisiveness
hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical
hopeful goodness revival allowance inference airliner gyroscopic adjustable defensible irritant replacement
adjustment dependent adoption homologou communism activate angulariti homologous effective bowdlerize probate rate
cease controll roll dying lying tying skies news innings outings cannings howe proceed exceed succeed spied died
flies dies enjoy enjoyment geologi theologi fulli yyyy syzygy toy ay yy by trees ivy oaten orrery generalizations
Is AB Running İs""".split()

SUFFIXES = ["ies", "ied", "eed", "ed", "ing", "y", "ational", "tional", "enci", "anci", "izer", "bli", "alli", "entli",
            "eli", "ousli", "ization", "ation", "ator", "alism", "iveness", "fulness", "ousness", "aliti", "iviti",
            "biliti", "fulli", "logi", "icate", "ative", "alize", "iciti", "ical", "ful", "ness", "al", "ance", "ence",
            "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "sion", "tion", "ion", "ou", "ism", "ate", "iti",
            "ous", "ive", "ize", "e", "ll", "s", "sses", "ss", "at", "bl", "iz"]


def test_measure_examples_from_the_paper():
    for word, m in [("tr", 0), ("ee", 0), ("tree", 0), ("y", 0), ("by", 0), ("trouble", 1), ("oats", 1),
                    ("trees", 1), ("ivy", 1), ("troubles", 2), ("private", 2), ("oaten", 2), ("orrery", 2)]:
        assert measure(word) == m, word


def test_stems_equal_nltk_on_real_words_and_the_paper():
    nltk = PorterStemmer()
    words = {w for text in documents().values() for w in re.findall(r"[A-Za-z]+", text)} | set(PAPER)
    assert len(words) > 5000
    assert [porter_stem(w) for w in sorted(words)] == [nltk.stem(w) for w in sorted(words)]


def test_stems_equal_nltk_on_random_suffix_stacks():
    nltk, rng = PorterStemmer(), random.Random(0)
    for _ in range(20000):
        w = "".join(rng.choice("aeiouybcdlstzwxnrm") for _ in range(rng.randint(0, 6)))
        w += "".join(rng.choice(SUFFIXES) for _ in range(rng.randint(0, 2)))
        assert porter_stem(w) == nltk.stem(w), w
