"""Reply metrics: distinct-n, dull rate, mean length, top reply share, corpus BLEU; the registry :data:`METRICS`
that every table reads. Pure Python, no torch, no gradio.

Every metric works on reply strings. Words are the whitespace-split tokens of :func:`normalize_reply`
(lower case, punctuation removed, apostrophes kept), so "I don't know." and "i don't know" count the same.

    >>> distinct_n(["i am fine", "i am here"], 1)      # 4 unique words / 6 words
    0.6666666666666666
    >>> dull_rate(["I don't know.", "my cat is called tom"])
    0.5
    >>> reply_metrics(["i am fine", "i don't know"], latencies=[0.1, 0.3])["dull_rate"]
    0.5
    >>> unknown_word_rate(["i played waterji", "i played golf"], known_words(["I played golf!"]))
    0.5
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# Replies that end a conversation (Li et al. 2016 list D) plus the usual one-word ones.
DULL_REPLIES: tuple[str, ...] = (
    "i don't know",
    "i don't know what you are talking about",
    "i don't know what you mean",
    "you know what i mean",
    "i know what you mean",
    "you don't know what you are saying",
    "you don't know anything",
    "i have no idea",
    "i'm not sure",
    "i'm sorry",
    "i don't think so",
    "yes",
    "no",
    "ok",
    "okay",
    "yeah",
    "sure",
    # bare acknowledgements: they answer anything and move nothing forward (punctuation is ignored: "what?")
    "cool",
    "nice",
    "haha",
    "lol",
    "what",
    "why",
    "really",
    "me too",
    "i know",
    "i'm good",
    "oh",
    "hi",
)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^\w\s']+")  # punctuation and symbols (apostrophes stay: "don't")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # quotes around words, not inside them
_BLEU_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def normalize_reply(text: str) -> str:
    """Lower case, NFKC, punctuation removed (apostrophes inside words kept), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    text = _LOOSE_APOSTROPHE.sub(" ", _NOT_WORD.sub(" ", text))
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The words of a reply, as every metric here counts them."""
    return normalize_reply(text).split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(replies: Iterable[str], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over ``replies`` (Li et al. 2016); 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [g for r in replies for g in ngrams(words(r), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_length(replies: Sequence[str]) -> float:
    """Mean reply length in words; 0.0 for no replies."""
    return sum(len(words(r)) for r in replies) / len(replies) if replies else 0.0


def dull_rate(replies: Sequence[str], dull_list: Iterable[str] = DULL_REPLIES) -> float:
    """Share of ``replies`` equal to a reply of ``dull_list`` after :func:`normalize_reply` on both sides."""
    if not replies:
        return 0.0
    dull = {normalize_reply(d) for d in dull_list}
    return sum(normalize_reply(r) in dull for r in replies) / len(replies)


def bleu(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` in [0, 1] (Papineni et al. 2002) with add-one smoothing of the n > 1 precisions
    (Lin & Och 2004), so short chit-chat replies do not all score 0.

    ``refs[i]`` is one reference string or a list of references for ``hyps[i]``. Tokens: lower-cased words and
    punctuation marks. Brevity penalty from the closest reference length.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return 0.0
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hyps, refs):
        h = _bleu_tokens(hyp)
        rs = [_bleu_tokens(r) for r in ([ref] if isinstance(ref, str) else ref)]
        if not rs:
            raise ValueError("every hypothesis needs at least one reference")
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda n_ref: (abs(n_ref - len(h)), n_ref))
        for n in range(1, max_n + 1):
            counts = Counter(ngrams(h, n))
            best: Counter = Counter()
            for r in rs:
                best |= Counter(ngrams(r, n))  # clip by the most any one reference holds
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += sum(counts.values())
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = math.log(matches[0] / totals[0])
    for n in range(1, max_n):
        log_p += math.log((matches[n] + 1) / (totals[n] + 1))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p / max_n)


def _bleu_tokens(text: str) -> list[str]:
    return _BLEU_TOKEN.findall(unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES))


def top_reply_share(replies: Sequence[str]) -> float:
    """Share of the replies taken by the most frequent one (after :func:`normalize_reply`); 0.0 for none. A
    policy collapsing onto one answer shows here first."""
    if not replies:
        return 0.0
    return Counter(normalize_reply(r) for r in replies).most_common(1)[0][1] / len(replies)


def rate_upper_bound(rate: float, n: int, z: float = 1.645) -> float:
    """One-sided upper confidence bound (Wilson score; z=1.645: 95%) of a proportion ``rate`` measured on ``n``
    items: what the rate may be on a fresh sample, e.g. the dull rate of a bot measured on 200 prompts.

    >>> round(rate_upper_bound(0.06, 200), 3), round(rate_upper_bound(0.10, 200), 3)
    (0.094, 0.14)
    """
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = rate + z2 / (2 * n)
    half = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return min(1.0, (centre + half) / (1 + z2 / n))


def known_words(texts: Iterable[str]) -> frozenset[str]:
    """Every word of ``texts`` (e.g. all utterances of a training split), as :func:`words` counts them."""
    return frozenset(w for t in texts for w in words(t))


def unknown_word_rate(replies: Sequence[str], known: Iterable[str]) -> float:
    """Share of ``replies`` holding a word outside ``known`` (a sub-word model can glue pieces into words no one
    wrote: "waterji", "acy calledcy"); 0.0 for no replies. With ``known`` = the training split's words it counts
    the junk fragments a decoder that rewards rare pieces (anti-LM) lets through."""
    if not replies:
        return 0.0
    known = known if isinstance(known, (set, frozenset)) else set(known)
    return sum(any(w not in known for w in words(r)) for r in replies) / len(replies)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Metric:
    """One reply metric: ``fn(replies, dull_list) -> float``, with its direction and a one-line definition.
    Every table that reports reply metrics (the evaluation, the tuning grid, the batch tab) reads
    :data:`METRICS`, so a metric added here appears in all of them."""

    name: str  # column name in every table
    label: str  # shown in the app
    definition: str  # one line, shown beside the tables
    higher_is_better: bool | None  # None: neither (e.g. length)
    fn: Callable[[Sequence[str], Iterable[str]], float]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("distinct_1", "distinct-1", "unique words / all words, pooled over the replies", True,
           lambda r, d: distinct_n(r, 1)),
    Metric("distinct_2", "distinct-2", "unique word bigrams / all word bigrams, pooled over the replies", True,
           lambda r, d: distinct_n(r, 2)),
    Metric("mean_words", "mean length (words)", "mean reply length in words (after normalisation)", None,
           lambda r, d: mean_length(r)),
    Metric("dull_rate", "dull rate", "share of replies in the dull list (\"i don't know\", ...)", False,
           lambda r, d: dull_rate(r, d)),
    Metric("top_reply_share", "top reply share", "share of the replies taken by the most frequent reply", False,
           lambda r, d: top_reply_share(r)),
)}


def reply_metrics(replies: Sequence[str], latencies: Sequence[float] | None = None,
                  dull_list: Iterable[str] = DULL_REPLIES) -> dict[str, float]:
    """Every metric of :data:`METRICS` on ``replies`` (plus ``mean_latency_s`` when ``latencies`` are given)."""
    dull = list(dull_list)
    out = {name: m.fn(replies, dull) for name, m in METRICS.items()}
    if latencies is not None:
        out["mean_latency_s"] = sum(latencies) / len(latencies) if latencies else 0.0
    return out
