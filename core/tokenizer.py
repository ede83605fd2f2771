"""Tokenizer: byte-level BPE (or word-level) from the ``tokenizers`` library, saved as ``tokenizer.json``.

    >>> from core.tokenizer import train_tokenizer, Tokenizer
    >>> tok = train_tokenizer(["hello there", "how are you?"], vocab_size=300)
    >>> tok.decode(tok.encode("Hello there"))
    'hello there'
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3 in every tokenizer this project trains
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
NEVER_GENERATED = (PAD_ID, BOS_ID, UNK_ID)  # special ids a reply never contains


class Tokenizer:
    """A thin wrapper that fixes the special ids and hides the ``tokenizers`` API from the rest of ``core``."""

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        hf.encode_special_tokens = True  # "<pad>" or "</s>" typed in a message is text, never a special id
        for i, s in enumerate(SPECIALS):
            if hf.token_to_id(s) != i:
                raise ValueError(f"tokenizer must map {s!r} to id {i}, found {hf.token_to_id(s)}")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no <s> or </s>). A special token's name in the text is never its special id:
        byte-level BPE encodes it as text; a word-level vocabulary, which holds the names as words, gives <unk>."""
        return _no_specials(self.hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [_no_specials(e.ids) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are skipped."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def id_to_token(self, i: int) -> str:
        """Readable piece for one id (byte-level marks turned back into text)."""
        return self.hf.decode([int(i)], skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def to_str(self) -> str:
        return self.hf.to_str()

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)))


def _no_specials(ids: list[int]) -> list[int]:
    """<pad>, <s> and </s> only ever come from the code (padding, the decoder's start, turn separators and ends):
    any that text produced becomes <unk>."""
    return [UNK_ID if i in (PAD_ID, BOS_ID, EOS_ID) else i for i in ids]


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 8000, kind: str = "bpe", lowercase: bool = True, min_frequency: int = 2
) -> Tokenizer:
    """Train a tokenizer on ``texts`` (the training split only).

    ``kind="bpe"``: byte-level BPE, so any input (emoji, markup, binary junk) maps to known tokens.
    ``kind="word"``: whitespace word-level vocabulary (used by the synthetic tasks).
    """
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "bpe":
        hf = HFTokenizer(models.BPE(unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "word":
        hf = HFTokenizer(models.WordLevel(unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # no decoder: tokens are joined with single spaces (WordPiece's decoder would also glue "a ," into "a,")
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS, show_progress=False
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; use 'bpe' or 'word'")
    hf.normalizer = normalizers.Sequence(norm)
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)
