"""WUPS: the open-ended NExT-QA score (NExT-OE's metric, as lmms-eval computes it).

For one prediction and one reference answer:

1. both are lemmatized word by word and the NExT-QA stop words are dropped (:func:`content_words`; the
   lemmatizer is pywsd's ``lemmatize_sentence`` rule: WordNet lemma for the tagged part of speech, else the
   Porter stem if WordNet knows it, else the word);
2. ``WUPS(a, b) = min(W(a, b), W(b, a))`` with ``W(x, y) = prod over words u of x of max over words v of y of
   wup(u, v)`` (words with no match above 0 are skipped; 0 if none matched), where ``wup`` is 1 for equal words,
   else the Wu-Palmer similarity of the two words' FIRST WordNet synsets, down-weighted by 0.1 when below the
   threshold alpha (0 or 0.9);
3. questions of type DC (counting) and DB (yes/no) are scored by exact match of the lemmatized answers instead;
   with a second reference answer the sample takes the better of the two.

WordNet comes from NLTK's data packages; nothing is downloaded at run time. :class:`NltkLexicon` checks for the
data and names the install command when it is missing. Tests use a small stand-in lexicon (the :class:`Lexicon`
protocol) instead.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["INSTALL_HINT", "Lexicon", "NltkLexicon", "content_words", "nextqa_oe_score", "wups"]

INSTALL_HINT = (
    "pip install nltk && python -m nltk.downloader wordnet punkt_tab averaged_perceptron_tagger_eng"
)

# The stop words NExT-OE tailored for NExT-QA (its stopwords file, also shipped by lmms-eval): NLTK's English
# list without the words that carry meaning in short video answers (no, not, up, down, before, after...).
NEXTQA_STOPWORDS = frozenset(
    ["i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've", "you'll", "you'd", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "she's", "her", "hers", "herself", "it", "it's", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "that'll", "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as", "until", "while", "to", "from", "of", "at", "for", "with", "about", "into", "through", "during", "again", "further", "then", "here", "there", "when", "where", "why", "how", "all", "any", "each", "most", "other", "some", "such", "only", "own", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've", "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn", "didn't", "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't", "isn", "isn't", "ma", "mightn", "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't", "shouldn", "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't", "wouldn", "wouldn't"]
)

EXACT_MATCH_TYPES = ("DC", "DB")  # counting and yes/no questions: exact match, not WUPS


class Lexicon(Protocol):
    """What WUPS needs from a language toolkit."""

    def tokenize(self, text: str) -> list[str]:
        """Words of ``text`` (Treebank rules)."""

    def lemmas(self, text: str) -> list[str]:
        """Lower-case lemma of each word of ``text`` (pywsd's ``lemmatize_sentence``)."""

    def wup(self, word1: str, word2: str) -> float:
        """Wu-Palmer similarity of the first synsets of two different words; 0.0 when either has no synset or the
        synsets are unrelated."""


def content_words(text: str, lexicon: Lexicon) -> str:
    """``text`` lemmatized, NExT-QA stop words removed, joined by single spaces."""
    return " ".join(w for w in lexicon.lemmas(text) if w not in NEXTQA_STOPWORDS)


def _word_similarity(word1: str, word2: str, alpha: float, lexicon: Lexicon) -> float:
    if word1 == word2:
        return 1.0
    similarity = lexicon.wup(word1, word2)
    return 0.1 * similarity if similarity < alpha else similarity


def _one_way(words1: list[str], words2: list[str], alpha: float, lexicon: Lexicon) -> float:
    product, matched = 1.0, False
    for w1 in words1:
        best = max((_word_similarity(w1, w2, alpha, lexicon) for w2 in words2), default=0.0)
        if best == 0:
            continue
        product *= best
        matched = True
    return product if matched else 0.0


def wups(prediction: str, reference: str, alpha: float, lexicon: Lexicon) -> float:
    """WUPS of two (already lemmatized, stop-word-free) phrases at threshold ``alpha``, in [0, 1]."""
    words1, words2 = lexicon.tokenize(prediction), lexicon.tokenize(reference)
    return min(_one_way(words1, words2, alpha, lexicon), _one_way(words2, words1, alpha, lexicon))


def nextqa_oe_score(
    prediction: str, answer: str, qtype: str, extra_answer: str | None, lexicon: Lexicon
) -> tuple[float, float, str]:
    """(WUPS@0, WUPS@0.9, the prediction's content words) of one open-ended NExT-QA answer.

    ``qtype`` is the question type (TP counts as TN); ``extra_answer`` is NExT-OE's additional reference answer,
    if any. WUPS@0 is what lmms-eval reports; WUPS@0.9 follows NExT-OE (both references at 0.9; lmms-eval's own
    0.9 column scores the second reference at 0, and does not report it).
    """
    pred = content_words(prediction, lexicon)
    refs = [content_words(answer, lexicon)]
    if extra_answer:
        refs.append(content_words(extra_answer, lexicon))
    if qtype in EXACT_MATCH_TYPES:
        exact = 1.0 if pred in refs else 0.0
        return exact, exact, pred
    at0 = max(wups(pred, ref, 0.0, lexicon) for ref in refs)
    at9 = max(wups(pred, ref, 0.9, lexicon) for ref in refs)
    return at0, at9, pred


class NltkLexicon:
    """:class:`Lexicon` on NLTK: ``word_tokenize``, the averaged-perceptron POS tagger, WordNet's lemmatizer and
    synsets, the Porter stemmer. Needs the NLTK data packages ``wordnet``, ``punkt_tab`` and
    ``averaged_perceptron_tagger_eng`` installed beforehand (:data:`INSTALL_HINT`); never downloads."""

    _DATA = (
        ("corpora/wordnet", "wordnet"),
        ("tokenizers/punkt_tab/english", "punkt_tab"),
        ("taggers/averaged_perceptron_tagger_eng", "averaged_perceptron_tagger_eng"),
    )
    _MORPHY = {"NN": "n", "JJ": "a", "VB": "v", "RB": "r"}

    def __init__(self) -> None:
        try:
            import nltk
        except ImportError as err:
            raise RuntimeError(f"NExT-QA open-ended scoring (WUPS) needs NLTK and its WordNet data: {INSTALL_HINT}") from err
        missing = []
        for resource, package in self._DATA:
            try:
                nltk.data.find(resource)
            except LookupError:
                try:  # WordNet is also found zipped
                    nltk.data.find(resource + ".zip")
                except LookupError:
                    missing.append(package)
        if missing:
            raise RuntimeError(
                f"NExT-QA open-ended scoring (WUPS) needs the NLTK data {', '.join(missing)}, which is not installed "
                f"(no download happens at run time): {INSTALL_HINT}"
            )
        from nltk import pos_tag, word_tokenize
        from nltk.corpus import wordnet
        from nltk.stem import PorterStemmer, WordNetLemmatizer

        self._tokenize = word_tokenize
        self._tag = pos_tag
        self._wordnet = wordnet
        self._lemmatizer = WordNetLemmatizer()
        self._stemmer = PorterStemmer()
        self._first_synset: dict[str, object | None] = {}

    def tokenize(self, text: str) -> list[str]:
        return list(self._tokenize(text))

    def _lemma(self, word: str, pos: str) -> str:
        if not pos:  # pywsd tags the word alone and falls back to noun
            pos = self._MORPHY.get(self._tag([word])[0][1][:2], "n")
        lemma = self._lemmatizer.lemmatize(word, pos=pos)
        if self._wordnet.synsets(lemma):
            return lemma
        stem = self._stemmer.stem(word)
        return stem if self._wordnet.synsets(stem) else word

    def lemmas(self, text: str) -> list[str]:
        tagged = self._tag(self._tokenize(text))
        return [self._lemma(word.lower(), self._MORPHY.get(tag[:2], "")) for word, tag in tagged]

    def _synset(self, word: str):
        if word not in self._first_synset:
            synsets = self._wordnet.synsets(word)
            self._first_synset[word] = synsets[0] if synsets else None
        return self._first_synset[word]

    def wup(self, word1: str, word2: str) -> float:
        s1 = self._synset(word1)
        if s1 is None:
            return 0.0
        s2 = self._synset(word2)
        if s2 is None:
            return 0.0
        similarity = s1.wup_similarity(s2)
        return 0.0 if similarity is None else float(similarity)
