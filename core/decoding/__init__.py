"""Decoding: one batched search loop with the strategies of :mod:`core.decoding.strategies` plugged in (greedy,
beam, sampling, diverse beam, contrastive); anti-LM, length bonus, repetition penalty, n-gram blocking as score
modifiers; GNMT length penalty in the finishing rule; MMI-bidi reranking of the n-best list; an optional trace.

Shape legend: B batch (prompts), K hypotheses kept per prompt (beams or samples), N = B*K rows,
C candidates per prompt, S source length, T target length, H hidden, V vocab, L layers.

One loop (:func:`generate`) owns the search. The prompts are encoded once; at step t (t tokens generated):
  1. the seq2seq model steps all rows at once (one row per prompt at t=0, where the K rows would all be <s>;
     N rows after), and while the anti-LM applies (the first ``gamma`` tokens, or with ``gamma_words`` until
     every live row has finished ``gamma`` words) the language model steps the same rows;
  2. score modifiers, small callables ``(scores (N, V), step) -> scores (N, V)``, edit the step log-probs;
  3. the strategy object (``STRATEGIES[cfg.strategy]``) proposes C candidates per prompt in rank order: beam
     search the top 2K of its K*V continuations, sampling one draw per row (K draws at t=0), greedy is beam
     search with K=1, diverse beam G groups of 2K/G, contrastive the top_k tokens re-ranked;
  4. </s> candidates ranked within the top K (of each group) become finished hypotheses, the first K others the
     next rows, and recurrent states follow their rows. Rows still going at ``max_len`` finish without </s>.
     A finished score is divided by |Y| (``length_norm``) or ((5 + |Y|) / 6) ** length_penalty (GNMT). A prompt
     is done when it has K finished hypotheses (fairseq's rule; K=1 is greedy), when it has no live row, or when
     no live row can still beat its n-th best finished score (an exact bound, used only where one exists).
     A done prompt leaves the batch: its rows, encoder memory and states are dropped before the next step, so
     the steps left cost only the prompts still going (with the trace on, its rows stay, masked).
Hypotheses are rebuilt from back-pointers at the end, so a step never copies the history of the search.
Hypothesis and Reply tokens end with </s> when the model produced it; per-token lists are aligned with them.

Score parts: every hypothesis carries ``parts`` that add up to its ``score`` (to float rounding):
  logp        sum of log p(t_k | t_<k, S), the seq2seq model's own log-probs;
  antilm      - antilm * sum_{k < gamma} log p_LM(t_k | t_<k): the anti-LM penalty as added (positive; with
              gamma_words the sum runs over the pieces of the first gamma words);
  bonus       n_bonus * (tokens that are not </s>), plus what the length normalisation (length_norm or
              length_penalty) changed: finished score - search total;
  diversity   the Hamming penalties diverse beam search subtracted (<= 0);
  repetition  what the repetition penalty changed: (theta - 1) * log p of each repeated token (<= 0 for theta > 1);
  mmi         what the MMI-bidi rerank changed: (1 - lam) log p(T|S) + lam log p(S|T) - the search score.
So after an MMI rerank the search parts stay as they were and ``mmi`` holds the difference.

Trace (``generate(..., trace=True)``, off by default and then free): ``Reply.trace`` lists, step by step, every
candidate of the step: ``{"step", "id", "parent", "token", "text", "logp", "score", "parts", "status"}``; ids
number the candidates of one prompt from 1 (``parent`` 0 is the start, <s>), ``logp`` is the step log-prob,
``score`` / ``parts`` are cumulative (a finished one's score is its ranking score), ``status`` is ``kept``,
``pruned`` or ``finished``.

    >>> cfg = DecodeConfig(strategy="beam", beam_size=10, antilm=0.5, gamma=5)
    >>> [reply] = generate(model, [tokenizer.encode("hi there")], cfg, lm=lm, tokenizer=tokenizer)
    >>> reply.text, reply.score, [(h.text, h.parts) for h in reply.nbest]
    >>> describe_settings(reply.settings)        # 'beam K=10 · anti-LM 0.5 (gamma 5) · max 30'
    >>> reply.to_json()                          # the reply as JSON-safe data: a -inf score or log p is None

The package, lowest layer first (each module imports only those above it in this list):
  registry.py    Strategy base class, the STRATEGIES registry, candidate helpers and sampling filters
  strategies.py  the registered strategies (greedy, beam, sample, delayed_beam, diverse_beam, contrastive)
  config.py      DecodeConfig: every setting's default, range, help and UI metadata; validation
  controls.py    settings for people: fields_for, describe_settings, ui_controls
  results.py     Reply and Hypothesis with their JSON form; score parts; the ranking of finished hypotheses
  modifiers.py   the score modifiers and build_modifiers; the forced prefix
  trace.py       the search trace
  engine.py      the search loop, MMI-bidi rerank and generate()
Teacher-forced scoring (log p of given replies) is :mod:`core.scoring`, below this package.
"""

from __future__ import annotations

from core.decoding import strategies as _strategies  # noqa: F401  (registers the strategies)
from core.decoding.config import MAX_PREFIX_CHARS, SPACE_MARK, UI_GROUPS, DecodeConfig
from core.decoding.controls import COMMON_FIELDS, SAMPLE_CONTROL, UIControl, describe_settings, fields_for, ui_controls
from core.decoding.engine import generate, mmi_rerank
from core.decoding.modifiers import (
    AntiLM,
    BanTokens,
    ForcePrefix,
    LengthBonus,
    MinLength,
    Modifier,
    NoRepeatContextNGram,
    NoRepeatNGram,
    RepetitionPenalty,
    Step,
    build_modifiers,
    check_prefix_ids,
    encode_prefix,
    word_starts,
)
from core.decoding.registry import (
    NEG_INF,
    STRATEGIES,
    Candidates,
    StepContext,
    Strategy,
    beam_candidates,
    min_p_filter,
    register,
    top_k_filter,
    top_p_filter,
    typical_filter,
    wide_topk,
)
from core.decoding.results import Hypothesis, Reply
from core.model import fold, select_memory, select_rows, tile, tile_memory
from core.scoring import sequence_logprobs
from core.tokenizer import NEVER_GENERATED

__all__ = ["COMMON_FIELDS", "MAX_PREFIX_CHARS", "NEG_INF", "NEVER_GENERATED", "SAMPLE_CONTROL", "SPACE_MARK",
           "STRATEGIES", "UI_GROUPS", "AntiLM", "BanTokens", "Candidates", "DecodeConfig", "ForcePrefix",
           "Hypothesis", "LengthBonus", "MinLength", "Modifier", "NoRepeatContextNGram", "NoRepeatNGram",
           "RepetitionPenalty", "Reply", "Step", "StepContext", "Strategy", "UIControl", "beam_candidates",
           "build_modifiers", "check_prefix_ids", "describe_settings", "encode_prefix", "fields_for", "fold",
           "generate", "min_p_filter", "mmi_rerank", "register", "select_memory", "select_rows", "sequence_logprobs",
           "tile", "tile_memory", "top_k_filter", "top_p_filter", "typical_filter", "ui_controls", "wide_topk",
           "word_starts"]
