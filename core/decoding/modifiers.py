"""Score modifiers: small callables ``(scores (N, V), step) -> scores (N, V)`` that edit a step's log-probs
before the strategy proposes candidates: banned tokens, min length, repetition penalty, n-gram and context
blocking, anti-LM, length bonus, a forced prefix; :func:`build_modifiers` makes the list a DecodeConfig asks
for.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from core.decoding.config import SPACE_MARK, DecodeConfig, _is_int
from core.decoding.registry import NEG_INF
from core.errors import SettingError
from core.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, PAD_ID, UNK_ID, Tokenizer


class Step(NamedTuple):
    """What a score modifier may look at, for all rows of one step."""

    t: int  # tokens generated so far (0 at the first step)
    prefix: Tensor | None  # (N, t) tokens generated so far, kept only when a modifier needs_prefix
    lm_logp: Tensor | None  # (N, V) language-model log-probs, while the anti-LM may apply
    logp: Tensor | None = None  # (N, V) the seq2seq model's log-probs of this step, before any modifier
    prompts: list[int] | None = None  # (N,) the call's prompt index of each row, when a modifier needs_prompts


Modifier = Callable[[Tensor, Step], Tensor]


class BanTokens:
    """Never generate ``ids`` (the specials <pad>, <s>, <unk>)."""

    def __init__(self, ids: Sequence[int] = NEVER_GENERATED) -> None:
        self.ids = torch.tensor(list(ids))

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if self.ids.device != scores.device:
            self.ids = self.ids.to(scores.device)
        return scores.index_fill(1, self.ids, NEG_INF)  # (N, V)


class MinLength(BanTokens):
    """Block </s> while fewer than ``min_len`` tokens have been generated."""

    def __init__(self, min_len: int, eos_id: int = EOS_ID) -> None:
        super().__init__([eos_id])
        self.min_len = min_len

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        return super().__call__(scores, step) if step.t < self.min_len else scores


class LengthBonus:
    """Add ``bonus`` to every token but </s>: n_bonus * |T| in the score of a finished reply."""

    def __init__(self, bonus: float, eos_id: int = EOS_ID) -> None:
        self.bonus, self.eos_id = bonus, eos_id

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        out = scores + self.bonus  # (N, V)
        out[:, self.eos_id] = scores[:, self.eos_id]
        return out


class AntiLM:
    """Li et al. (2016) MMI-antiLM: subtract ``weight * log p_LM(token | prefix)`` for the first ``gamma``
    tokens (</s> included), so tokens any reply would use lose to tokens that fit this prompt.

    With ``min_p`` > 0 the penalty applies only to plausible tokens: those the seq2seq model gives at least
    ``min_p`` times the probability of its most likely token (a floor like min-p sampling's), so a token the model
    itself finds implausible (a stray symbol, a rare fragment) is never promoted because the LM finds it rarer still.

    With ``starts`` (V,) bool, the "starts a word" table of :func:`word_starts`, gamma counts words: a token is
    penalised while it belongs to one of the first gamma words, continuation pieces included (a reply's first
    token always begins a word; </s> counts as a word start, so it is penalised while fewer than gamma words
    are complete). The word count of each row is read from the prefix, so the modifier then ``needs_prefix``."""

    def __init__(self, weight: float, gamma: int, starts: Tensor | None = None, min_p: float = 0.0) -> None:
        self.weight, self.gamma, self.starts = weight, gamma, starts
        self.log_min_p = math.log(min_p) if min_p > 0 else None
        self.applied: Tensor | None = None  # the mask of the last step it penalised (None: everywhere)
        self.needs_prefix = starts is not None
        self.lm_steps = gamma  # the language model steps at least while t < lm_steps (see lm_needed)

    def words_begun(self, prefix: Tensor) -> Tensor:
        """prefix (N, t) -> (N,) words begun so far: the first token, then every token that starts a word."""
        if prefix.size(1) == 0:
            return prefix.new_zeros(prefix.size(0))
        starts = self._starts(prefix.device)
        return 1 + starts[prefix[:, 1:]].sum(1)  # (N,)

    def mask(self, step: Step) -> Tensor | None:
        """(N, V) True where the penalty applies to the next token of a row; None: everywhere (token gamma, or
        before gamma steps where every token is in the first gamma words, and no plausibility floor)."""
        plausible = None
        if self.log_min_p is not None and step.logp is not None:
            plausible = step.logp >= step.logp.amax(1, keepdim=True) + self.log_min_p  # (N, V)
        if self.starts is None or step.t < self.gamma:
            return plausible
        words = self.words_begun(step.prefix).unsqueeze(1)  # (N, 1)
        in_span = (words < self.gamma) | ((words == self.gamma) & ~self._starts(words.device).unsqueeze(0))  # (N, V)
        return in_span if plausible is None else in_span & plausible

    def lm_needed(self, t: int, prefix: Tensor | None, live: Tensor) -> bool:
        """Whether step ``t`` can still be penalised for a live row (``live`` (N,) bool): t < gamma in tokens;
        in words, while some live row has begun at most gamma words (its next piece may continue word gamma)."""
        if t < self.gamma:
            return True
        if self.starts is None or prefix is None:
            return False
        return bool(((self.words_begun(prefix) <= self.gamma) & live).any())

    def _starts(self, device: torch.device) -> Tensor:
        if self.starts.device != device:
            self.starts = self.starts.to(device)
        return self.starts

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.lm_logp is None or (self.starts is None and step.t >= self.gamma):
            self.applied = torch.zeros_like(scores, dtype=torch.bool)  # nothing penalised this step
            return scores
        penalty = self.weight * step.lm_logp.clamp(min=-1e4)  # (N, V); clamp: -inf - -inf is NaN
        mask = self.applied = self.mask(step)  # kept for the engine's score parts of this step
        return scores - (penalty if mask is None else penalty * mask)  # (N, V)


_WORD_STARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def word_starts(tokenizer: Tokenizer) -> Tensor:
    """(V,) bool "this token starts a word", built once per tokenizer: a byte-level BPE piece that begins with
    the space marker (``Ġ``), and the special tokens (</s> ends the reply, so it counts as a new word); in a
    word-level vocabulary every token is a word."""
    table = _WORD_STARTS.get(tokenizer)
    if table is None:
        hf = tokenizer.hf
        pieces = [hf.id_to_token(i) or "" for i in range(tokenizer.vocab_size)]
        if type(hf.model).__name__ == "WordLevel":
            table = torch.ones(len(pieces), dtype=torch.bool)
        else:
            table = torch.tensor([p.startswith(SPACE_MARK) for p in pieces], dtype=torch.bool)
            table[[PAD_ID, BOS_ID, EOS_ID, UNK_ID]] = True
        _WORD_STARTS[tokenizer] = table
    return table


class NoRepeatNGram:
    """Block a token that would complete an n-gram already present in the row's prefix."""

    needs_prefix = True

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        n, prefix = self.n, step.prefix  # prefix (N, t)
        if prefix is None or prefix.size(1) < n:
            return scores
        if n == 1:
            return scores.scatter(1, prefix, NEG_INF)  # every used token is blocked
        grams = prefix.unfold(1, n, 1)  # (N, t-n+1, n)
        seen = (grams[:, :, :-1] == prefix[:, None, -(n - 1):]).all(-1)  # (N, t-n+1) same first n-1 tokens
        hits = torch.zeros_like(scores).scatter_add_(1, grams[:, :, -1], seen.to(scores.dtype))  # (N, V)
        return scores.masked_fill(hits > 0, NEG_INF)


class NoRepeatContextNGram:
    """Block a token that would complete an n-gram of the bot's own earlier turns (ParlAI's context blocking):
    ``turns[b]`` holds the token lists of prompt b's own earlier turns."""

    needs_prefix = True
    needs_prompts = True

    def __init__(self, n: int, turns: Sequence[Sequence[Sequence[int]]]) -> None:
        self.n = n
        self.next_of: list[dict[tuple[int, ...], set[int]]] = []  # per prompt: first n-1 tokens -> last tokens
        for own in turns:
            table: dict[tuple[int, ...], set[int]] = {}
            for turn in own:
                for i in range(len(turn) - n + 1):
                    table.setdefault(tuple(turn[i: i + n - 1]), set()).add(turn[i + n - 1])
            self.next_of.append(table)

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.prefix is None or step.prompts is None or step.prefix.size(1) < self.n - 1:
            return scores
        rows, toks = [], []
        ends = step.prefix[:, step.prefix.size(1) - self.n + 1:].tolist() if self.n > 1 else [[]] * scores.size(0)
        for r, (b, end) in enumerate(zip(step.prompts, ends)):
            for tok in self.next_of[b].get(tuple(end), ()):
                rows.append(r)
                toks.append(tok)
        if not rows:
            return scores
        return scores.index_put((torch.tensor(rows, device=scores.device), torch.tensor(toks, device=scores.device)),
                                torch.tensor(NEG_INF, device=scores.device))


class RepetitionPenalty:
    """CTRL (Keskar et al. 2019): a token already in the row's prefix has its score l -> l * theta if l < 0 else
    l / theta. On the model's log-probs (all <= 0, as in Hugging Face's beam search) it multiplies by theta."""

    needs_prefix = True

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        prefix = step.prefix  # (N, t)
        if prefix is None or prefix.size(1) == 0:
            return scores
        seen = scores.gather(1, prefix)  # (N, t)
        return scores.scatter(1, prefix, torch.where(seen < 0, seen * self.theta, seen / self.theta))


def _repetition_delta(logp: float, theta: float) -> float:
    """What :class:`RepetitionPenalty` adds to a repeated token's step score of model log-prob ``logp``."""
    return logp * theta - logp if logp < 0 else logp / theta - logp


class ForcePrefix:
    """The reply starts with ``ids``: at step t < len(ids) every token but ids[t] is blocked. The forced token keeps
    the score every other modifier gave it, so its log p, anti-LM and bonus parts count as for any token. Applied
    last."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def __call__(self, scores: Tensor, step: Step) -> Tensor:
        if step.t >= len(self.ids):
            return scores
        keep = self.ids[step.t]
        out = torch.full_like(scores, NEG_INF)
        out[:, keep] = scores[:, keep]
        return out


def encode_prefix(prefix: str, tokenizer: Tokenizer | None, max_len: int) -> list[int]:
    """Token ids of a forced reply prefix (normalised as a prompt is; without a tokenizer, ids written as
    space-separated integers, the way replies are written without one). SettingError naming ``prefix`` if it has
    nothing to encode, holds a token the tokenizer cannot represent, or is longer than ``max_len`` tokens."""
    from core.corpora import normalize_text

    text = normalize_text(prefix)
    if not text:
        raise SettingError("DecodeConfig.prefix: nothing left after removing whitespace and control characters",
                           field="prefix")
    if tokenizer is None:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError:
            raise SettingError(f"DecodeConfig.prefix={prefix!r}: without a tokenizer, give token ids separated by "
                               "spaces", field="prefix") from None
    else:
        ids = tokenizer.encode(text)
    if UNK_ID in ids:
        raise SettingError(f"DecodeConfig.prefix={prefix!r}: the tokenizer cannot encode part of it (it becomes "
                           "<unk>); leave that part out", field="prefix")
    if any(i in NEVER_GENERATED or i == EOS_ID for i in ids):
        raise SettingError(f"DecodeConfig.prefix={prefix!r}: it holds a special token (<s>, </s>, <pad>) that no "
                           "reply can contain", field="prefix")
    if len(ids) > max_len:
        raise SettingError(f"DecodeConfig.prefix: {len(ids)} tokens, longer than max_len={max_len}; shorten it or "
                           "raise max_len", field="prefix")
    return ids


def check_prefix_ids(ids: Sequence[int], vocab_size: int | None, cfg: DecodeConfig) -> list[int]:
    """Forced reply-start token ids given directly (a branch from a traced node: its path), checked as
    :func:`encode_prefix` checks a text prefix: SettingError naming ``prefix`` unless every id is a token a reply can
    hold (0 <= id < V, no <pad> <s> <unk>), </s> comes only last (then the whole reply is forced) and not before
    ``min_len`` tokens, and there are at most ``max_len`` of them."""
    ids = list(ids)
    V = vocab_size if vocab_size is not None else math.inf
    if any(not _is_int(i) or not 0 <= i < V for i in ids):
        raise SettingError(f"prefix_ids={ids[:12]!r}: token ids must be ints in 0..{V - 1}", field="prefix")
    if any(i in NEVER_GENERATED for i in ids) or EOS_ID in ids[:-1]:
        raise SettingError("prefix_ids: a reply cannot hold <pad>, <s> or <unk>, nor </s> before its end",
                           field="prefix")
    if ids and ids[-1] == EOS_ID and len(ids) - 1 < cfg.min_len:
        raise SettingError(f"prefix_ids: the reply would end after {len(ids) - 1} tokens, before "
                           f"min_len={cfg.min_len}", field="prefix")
    if len(ids) > cfg.max_len:
        raise SettingError(f"prefix_ids: {len(ids)} tokens, longer than max_len={cfg.max_len}", field="prefix")
    return ids


def build_modifiers(cfg: DecodeConfig, starts: Tensor | None = None,
                    own_turns: Sequence[Sequence[Sequence[int]]] | None = None,
                    prefix: Sequence[int] | None = None) -> list[Modifier]:
    """The modifiers ``cfg`` asks for; zero weights add none, so antilm=0 / n_bonus=0 is plain beam search.
    The repetition penalty comes first, so it acts on the model's own log-probs. ``starts``: the word-start
    table (:func:`word_starts`) the anti-LM needs with ``gamma_words``; ``own_turns``: per prompt, the bot's own
    earlier turns (token ids) that ``no_repeat_context_ngram`` blocks; ``prefix``: the forced reply start's ids
    (:func:`encode_prefix`)."""
    mods: list[Modifier] = [BanTokens()]
    if cfg.min_len > 0:
        mods.append(MinLength(cfg.min_len))
    if cfg.repetition_penalty != 1.0:
        mods.append(RepetitionPenalty(cfg.repetition_penalty))
    if cfg.no_repeat_ngram > 0:
        mods.append(NoRepeatNGram(cfg.no_repeat_ngram))
    if cfg.no_repeat_context_ngram > 0 and own_turns is not None and any(own_turns):
        mods.append(NoRepeatContextNGram(cfg.no_repeat_context_ngram, own_turns))
    if cfg.antilm > 0 and cfg.gamma > 0:
        if cfg.gamma_words and starts is None:
            raise ValueError("gamma_words=True counts words: pass the tokenizer (generate(..., tokenizer=...))")
        mods.append(AntiLM(cfg.antilm, cfg.gamma, starts if cfg.gamma_words else None, cfg.antilm_min_p))
    if cfg.n_bonus > 0:
        mods.append(LengthBonus(cfg.n_bonus))
    if prefix:
        mods.append(ForcePrefix(prefix))
    return mods


