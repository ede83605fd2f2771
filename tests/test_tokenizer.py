"""Tokenizer: fixed special ids, lossless (lower-cased) round trips on any text, save/load, word-level kind."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK, UNK_ID, Tokenizer, train_tokenizer

TEXTS = [
    "hello there, how are you?",
    "i am fine thanks. and you?",
    "what are you doing today?",
    "nothing much, just reading a book.",
    "<b>bold</b> text and <a href='x'>a link</a>",
    "emoji time 😀 🎉",
] * 5

ROUND_TRIPS = [
    "Hello There, how ARE you?",  # ascii, upper case is lowered
    "😀🎉 emoji 👍🏽 with skin tone and 👨‍👩‍👧 family",
    '<div class="x"><a href="https://example.com/?q=1&amp;r=2">Link</a></div>',
    "Café naïve Ελληνικά 日本語 Привет مرحبا",  # mixed unicode never seen in training
    "tabs\tand  double  spaces",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS, vocab_size=300)


def test_specials_at_fixed_ids(tok):
    assert [tok.hf.token_to_id(s) for s in SPECIALS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    assert SPECIALS[UNK_ID] == UNK
    assert 256 + 4 <= tok.vocab_size <= 300  # the byte alphabet, the specials and some merges


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_bpe_round_trip_is_lossless_up_to_case(tok, text):
    ids = tok.encode(text)
    assert UNK_ID not in ids and not set(ids) & {PAD_ID, BOS_ID, EOS_ID}  # byte-level: every input is known
    assert tok.decode(ids) == text.lower()
    assert tok.encode_batch([text, "hello"]) == [ids, tok.encode("hello")]


def test_merges_are_learned(tok):
    assert len(tok.encode("hello there")) < len("hello there")  # frequent words are fewer tokens than bytes
    assert tok.id_to_token(tok.encode("hello")[0]).strip() != ""


def test_decode_skips_specials(tok):
    ids = tok.encode("how are you?")
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "how are you?"


def test_lowercase_off_keeps_case():
    tok = train_tokenizer(TEXTS, vocab_size=300, lowercase=False)
    assert tok.decode(tok.encode("Hello There")) == "Hello There"


def test_save_load_same_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.vocab_size == tok.vocab_size
    for text in ROUND_TRIPS:
        assert back.encode(text) == tok.encode(text)
        assert back.decode(back.encode(text)) == text.lower()
    assert Tokenizer(HFTokenizer.from_str(tok.to_str())).encode("hello there") == tok.encode("hello there")


def test_word_level_kind():
    tok = train_tokenizer(["3 1 4 1 5", "9 2 6 5 3", "a , b ."], kind="word")
    assert [tok.hf.token_to_id(s) for s in SPECIALS] == [0, 1, 2, 3]
    assert tok.vocab_size == 4 + len(set("3 1 4 5 9 2 6 a , b .".split()))
    ids = tok.encode("5 3 1 a , b .")
    assert len(ids) == 7 and UNK_ID not in ids
    assert tok.decode(ids) == "5 3 1 a , b ."  # words joined by single spaces, punctuation untouched
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == "5 3 1 a , b ."
    assert tok.encode("1 seven 2") == [tok.encode("1")[0], UNK_ID, tok.encode("2")[0]]


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer(TEXTS, kind="char")


@pytest.mark.parametrize(
    "vocab",
    [
        {"hello": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "<unk>": 4},  # specials shifted
        {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3},  # swapped
        {"<pad>": 0, "<s>": 1, "</s>": 2, "hello": 3},  # one missing
    ],
)
def test_wrapper_rejects_specials_elsewhere(vocab):
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="hello"))
    with pytest.raises(ValueError, match="must map"):
        Tokenizer(hf)


def test_a_special_tokens_name_in_a_message_is_text_not_the_special_id(tmp_path):
    """A visitor typing "<pad>" or "</s>" gets those characters read as text: no padding id inside the prompt
    (the model read it as an empty source) and no fake turn separator in the conversation window."""
    tok = train_tokenizer(["hello there", "how are you", "<pad> and </s> are only words here"] * 5, vocab_size=300)
    ids = tok.encode("hi <pad> there </s> you <s> <unk>")
    assert not set(ids) & {PAD_ID, BOS_ID, EOS_ID, UNK_ID}
    assert tok.decode(ids) == "hi <pad> there </s> you <s> <unk>"
    assert tok.encode_batch(["</s>"]) == [tok.encode("</s>")] and EOS_ID not in tok.encode("</s>")
    words = train_tokenizer(["a b c"] * 3, vocab_size=50, kind="word", min_frequency=1)  # the names are in its vocab
    assert words.encode("a <pad> b </s> <s>") == [words.encode("a")[0], UNK_ID, words.encode("b")[0], UNK_ID, UNK_ID]
    saved = tmp_path / "tokenizer.json"
    tok.save(saved)
    assert Tokenizer.load(saved).encode("<pad>") == tok.encode("<pad>")  # so does a loaded one
