"""core.evaluation.metrics on hand-counted examples."""

import math

import pytest

from core.evaluation.metrics import (
    DULL_REPLIES,
    METRICS,
    bleu,
    distinct_n,
    dull_rate,
    known_words,
    mean_length,
    normalize_reply,
    reply_metrics,
    top_reply_share,
    unknown_word_rate,
    words,
)


@pytest.mark.parametrize("text, expected", [
    ("I don't know.", "i don't know"),
    ("  I  DON\u2019T   know!!! ", "i don't know"),
    ("'quoted' words, here?", "quoted words here"),
    ("<b>hi</b> :-)", "b hi b"),
    ("ＯＫ", "ok"),  # NFKC folds full-width letters
    ("", ""),
])
def test_normalize_reply(text, expected):
    assert normalize_reply(text) == expected


def test_distinct_n_pools_ngrams_over_replies():
    replies = ["i am fine", "i am here", "I am fine!"]
    assert distinct_n(replies, 1) == pytest.approx(4 / 9)  # i am fine here
    assert distinct_n(replies, 2) == pytest.approx(3 / 6)  # (i am) (am fine) (am here)
    assert distinct_n(replies, 3) == pytest.approx(2 / 3)
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n(replies, 0)


def test_dull_rate_matches_after_normalisation():
    replies = ["I don't know.", "i DON'T know what you are talking about!", "my cat is called tom", "Okay"]
    assert dull_rate(replies) == pytest.approx(3 / 4)
    assert dull_rate(replies, dull_list=["My cat is called Tom."]) == pytest.approx(1 / 4)
    assert dull_rate([]) == 0.0
    assert "i don't know" in DULL_REPLIES and all(d == normalize_reply(d) for d in DULL_REPLIES)


def test_mean_length_counts_words():
    assert mean_length(["i am fine .", "ok"]) == pytest.approx(2.0)
    assert mean_length([]) == 0.0
    assert words("Hello, world!") == ["hello", "world"]


def test_bleu_identity_and_disjoint():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu(["dogs bark loudly"], ["the cat sat"]) == 0.0
    assert bleu([], []) == 0.0
    with pytest.raises(ValueError, match="references"):
        bleu(["a"], [])


def test_bleu_hand_computed_with_smoothing_and_brevity():
    # hyp "the cat" vs ref "the cat sat": p1 = 2/2, p2 = (1+1)/(1+1), p3 = (0+1)/(0+1), p4 = (0+1)/(0+1)
    # brevity: exp(1 - 3/2)
    assert bleu(["the cat"], ["the cat sat"]) == pytest.approx(math.exp(1 - 3 / 2))
    # unigram precision 1/2 ("the" matches, "dog" does not); bigram (0+1)/(1+1)
    expected = math.exp((math.log(1 / 2) + math.log(1 / 2) + 0 + 0) / 4)
    assert bleu(["the dog"], ["the cat"]) == pytest.approx(expected)


def test_bleu_multiple_references_clip_and_closest_length():
    # "the the the": clipped unigram count is the most any one reference holds (2)
    score = bleu(["the the the"], [["the cat the", "a b c d e f"]])
    expected = math.exp((math.log(2 / 3) + math.log(1 / 3) + math.log(1 / 2) + 0) / 4)  # ref length 3: no penalty
    assert score == pytest.approx(expected)


def test_reply_metrics_summary():
    m = reply_metrics(["i don't know", "my cat is called tom"], latencies=[0.1, 0.3])
    assert m["dull_rate"] == 0.5
    assert m["mean_words"] == pytest.approx(4.0)
    assert m["mean_latency_s"] == pytest.approx(0.2)
    assert set(m) == {*METRICS, "mean_latency_s"}  # every metric of the registry, one name each
    assert {"distinct_1", "distinct_2", "mean_words", "dull_rate", "top_reply_share"} <= set(METRICS)  # a new one adds
    assert "mean_latency_s" not in reply_metrics(["hi"])


def test_top_reply_share_counts_the_most_frequent_normalised_reply():
    assert top_reply_share(["What about you?", "what about you", "i like cats", "ok"]) == 0.5
    assert top_reply_share(["a", "b"]) == 0.5 and top_reply_share([]) == 0.0


def test_every_registered_metric_has_a_definition_and_a_direction():
    for name, m in METRICS.items():
        assert m.name == name and m.label and m.definition and m.higher_is_better in (True, False, None)
        assert isinstance(m.fn(["i am fine", "i don't know"], ["i don't know"]), float)


def test_unknown_word_rate_counts_replies_with_a_word_never_seen():
    known = known_words(["I played golf!", "Don't you like TEXAS?"])
    assert known >= {"i", "played", "golf", "don't", "texas"}
    replies = ["i played waterji", "I played golf.", "don't you like texas", "acy calledcy", "", "golf!!!"]
    assert unknown_word_rate(replies, known) == pytest.approx(2 / 6)  # case and punctuation do not count
    assert unknown_word_rate([], known) == 0.0
    assert unknown_word_rate(["i played golf"], ["i", "played"]) == 1.0  # any iterable of words


def test_rate_upper_bound_is_the_one_sided_wilson_bound():
    from core.evaluation.metrics import rate_upper_bound

    z = 1.645
    assert rate_upper_bound(0.0, 200) == pytest.approx(z * z / (200 + z * z))  # no dull reply seen: still > 0
    assert rate_upper_bound(0.5, 100) == pytest.approx(0.5812, abs=1e-4)  # by hand: (0.5 + 0.0811) with z=1.645
    assert rate_upper_bound(0.06, 200) < 0.10 < rate_upper_bound(0.10, 200)  # the tune cap's two cases
    assert rate_upper_bound(0.06, 2000) < rate_upper_bound(0.06, 200) < rate_upper_bound(0.06, 20)  # more items
    assert rate_upper_bound(1.0, 50) == pytest.approx(1.0) and rate_upper_bound(0.3, 0) == 1.0
