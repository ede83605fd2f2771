"""What if it had said something else? Branch a search from any traced node, and look at every step of a reply.

Shape legend: S source length, T reply length (tokens, </s> included when the reply has it), V vocab, k top tokens.

Branching: the search is run again with a node's token path forced as the reply's start (the path's ids through
``generate(..., prefix_ids=...)``, never through text, where a BPE round trip could change the ids), with every
other setting as it was; the new best reply is compared with the original part by part (log p, anti-LM, bonus,
diversity, repetition, MMI: :mod:`core.decoding`'s score parts, which add up to each score).

A branch is a decode: :func:`branch` calls ``respond`` (by default ``bot.respond``; a server passes
:meth:`core.serving.BatchScheduler.responder`, so the search runs where every other decode of the server runs).

Token view: the reply is scored teacher-forced (one pass of the decoder over its tokens, the same numbers the
search's steps computed, up to float rounding): at each step the k tokens the model finds most likely, each with its
probability and, where the anti-LM is on, the language model's log p and the anti-LM modifier's score of it.

    >>> bot = load_bots()["antilm"]
    >>> reply = bot.respond("how are you?", trace=True)
    >>> b = branch(bot, "how are you?", node_path(reply.trace, 12), original=reply)
    >>> b.branch.text, b.score_difference, [(d.part, d.difference) for d in b.parts]
    >>> steps = token_view(bot, "how are you?", reply.tokens)
    >>> [(c.piece, round(c.p, 2), c.penalised) for c in steps[0].top]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.bots import Bot
from core.decoding import NEVER_GENERATED, AntiLM, Hypothesis, Reply, Step, word_starts
from core.tokenizer import BOS_ID, EOS_ID

TOP_K = 10  # tokens listed per step of the token view


# ----------------------------------------------------------------------------- branching


def node_path(trace: Sequence[Mapping[str, Any]] | None, node_id: Any) -> list[int]:
    """The token ids from the start to trace node ``node_id`` (kept, pruned or finished), the node's own token
    last. ValueError with a message for people when ``node_id`` is not an id of ``trace``."""
    rows = {x["id"]: x for x in trace or []}
    if not rows:
        raise ValueError("there is no traced search to branch from: trace one first")
    try:
        x = float(node_id)
    except (TypeError, ValueError):
        x = None
    if x is None or isinstance(node_id, bool) or not x.is_integer():
        raise ValueError(f"{node_id!r} is not a node id: give a whole number from the trace table's id column "
                         f"(1 to {max(rows)})")
    i = int(x)
    if i not in rows:
        raise ValueError(f"node {i} is not in this trace: its ids run from 1 to {max(rows)} (0 is the start, "
                         "which every reply shares)")
    path = []
    while i:
        path.append(rows[i]["token"])
        i = rows[i]["parent"]
    return path[::-1]


@dataclass
class PartDiff:
    """One score part of the original best reply and of the branch's, and what the branch changed."""

    part: str  # a key of Hypothesis.parts: logp, antilm, bonus, diversity, repetition, mmi
    original: float
    branch: float
    difference: float  # branch - original


@dataclass
class Branch:
    """The original search's best reply and the best reply of the search forced to start with ``path``."""

    path: list[int]  # the forced token ids
    original: Reply
    branch: Reply
    parts: list[PartDiff]  # their score parts side by side; the differences add up to score_difference

    @property
    def score_difference(self) -> float:
        """branch score - original score."""
        return self.branch.score - self.original.score


def parts_difference(original: Hypothesis, branch: Hypothesis) -> list[PartDiff]:
    """The score parts of two hypotheses side by side, in the original's order (a part only one has counts 0 in
    the other), with the branch's change of each; the changes add up to the change of score."""
    names = [*original.parts, *(p for p in branch.parts if p not in original.parts)]
    rows = []
    for name in names:
        a, b = original.parts.get(name, 0.0), branch.parts.get(name, 0.0)
        rows.append(PartDiff(name, a, b, b - a))
    return rows


def branch(bot: Bot, message: str, path: Sequence[int], *, history: Sequence[str] | None = None,
           overrides: Mapping[str, Any] | None = None, original: Reply | None = None,
           respond: Callable[..., Reply] | None = None) -> Branch:
    """Run ``bot``'s search on ``message`` (after ``history``, with DecodeConfig ``overrides``) again with the
    reply forced to start with the token ids ``path`` (a traced node's :func:`node_path`; the text ``prefix``
    setting, if any, is already inside a traced path, so it is dropped), traced; ``original``: the unforced
    reply, decoded here when not given. A path ending with </s> forces the whole reply. ValueError (a
    SettingError for a bad path or setting) with a message for people when no reply can start with ``path``
    under the settings (a blocking rule, say no-repeat n-gram, forbids one of its tokens). ``respond``: what
    decodes, with :meth:`~core.bots.Bot.respond`'s signature (default ``bot.respond``; e.g. a scheduler's
    :meth:`~core.serving.BatchScheduler.responder`, whose Busy and timeouts it raises)."""
    overrides = dict(overrides or {})
    if not path:
        raise ValueError("the start node (0) is every reply's start: pick a node of the trace")
    respond = respond or bot.respond
    with torch.inference_mode():
        if original is None:
            original = respond(message, history=history, trace=True, **overrides)
        new = respond(message, history=history, trace=True, prefix_ids=list(path), **{**overrides, "prefix": ""})
    if not new.nbest or not original.nbest:
        shown = bot.tokenizer.decode([t for t in path if t != EOS_ID])
        raise ValueError(f"no reply can start with {shown!r} under these settings: one of its tokens is blocked "
                         "there (no-repeat n-gram, min length, ...)")
    return Branch(list(path), original, new, parts_difference(original.nbest[0], new.nbest[0]))


# ----------------------------------------------------------------------------- token view


@dataclass
class TokenChoice:
    """One candidate next token at one step of a reply."""

    token: int
    piece: str  # the tokenizer's piece (byte-level BPE writes a leading space as "Ġ")
    rank: int  # 1 = the model's most likely token among those the decoder may emit at this step
    p: float  # its probability under the seq2seq model
    logp: float  # log p
    lm_logp: float | None  # the language model's log p (None: the anti-LM is off)
    penalised: float | None  # the anti-LM modifier's score: logp - antilm * lm_logp where the penalty applies
    penalty_applies: bool  # whether the anti-LM penalty applies to this token at this step


@dataclass
class TokenStep:
    """What the model saw at one step of a reply: the reply's own token and the k most likely ones."""

    step: int  # tokens before it
    path: list[int]  # the reply's tokens before this step: a branch from a choice forces path + [its token]
    chosen: TokenChoice  # the reply's token at this step
    top: list[TokenChoice]  # the k most likely tokens, most likely first


def forced_logprobs(model: Any, src: Sequence[int] | None, tokens: Sequence[int]) -> Tensor:
    """Teacher-forced log-probs (T, V) of each step of ``tokens``: row t is log p(. | tokens[:t], src), the
    distribution the search's step t computed. ``src`` None: ``model`` is a language model (log p(. | tokens[:t]))."""
    device = next(model.parameters()).device
    tgt_in = torch.tensor([[BOS_ID, *tokens[:-1]]], dtype=torch.long, device=device)  # (1, T)
    if src is None:
        logits = model(tgt_in)  # (1, T, V)
    else:
        mem = model.encode(torch.tensor([list(src)], dtype=torch.long, device=device),
                           torch.tensor([len(src)], device=device))  # outputs (1, S, H)
        logits, _, _ = model.decoder(tgt_in, mem.state, mem)  # (1, T, V)
    return torch.log_softmax(logits[0].float(), -1)  # (T, V)


def _anti_lm(bot: Bot, overrides: Mapping[str, Any]) -> AntiLM | None:
    """The anti-LM modifier the search would use with these settings, or None when it is off."""
    cfg = bot.settings(**overrides)
    if cfg.antilm <= 0 or cfg.gamma <= 0 or bot.lm is None:
        return None
    starts = word_starts(bot.tokenizer) if cfg.gamma_words else None
    return AntiLM(cfg.antilm, cfg.gamma, starts, cfg.antilm_min_p)


def token_view(bot: Bot, message: str, tokens: Sequence[int], *, history: Sequence[str] | None = None,
               overrides: Mapping[str, Any] | None = None, k: int = TOP_K) -> list[TokenStep]:
    """For each step of the reply ``tokens`` to ``message`` (after ``history``), teacher-forced: the ``k`` most
    likely next tokens (among those the decoder may emit there: no <pad> <s> <unk>, no </s> before min_len), their
    probabilities, and, when ``bot`` with ``overrides`` uses the anti-LM, each one's LM log p and its score under
    the anti-LM modifier (the search's own :class:`~core.decoding.AntiLM`: ``logp - antilm * lm_logp`` where the
    penalty applies, gamma and the plausibility floor as set; ``logp`` elsewhere).

    Not a decode: one teacher-forced pass of the decoder (and of the LM) over a known reply, no search, so a
    server runs it in its own process with ``bot``'s weights; only searches go through its scheduler."""
    overrides = dict(overrides or {})
    cfg = bot.settings(**overrides)
    tokens = list(tokens)
    if not tokens:
        return []
    with torch.inference_mode():
        src = bot.encode_prompt(message, history)
        logp = forced_logprobs(bot.model, src, tokens)  # (T, V)
        anti = _anti_lm(bot, overrides)
        lm_logp = forced_logprobs(bot.lm, None, tokens) if anti else None  # (T, V)
        ids = torch.tensor(tokens, device=logp.device)  # (T,)
        steps = []
        for t in range(len(tokens)):
            scores, applies = logp[t], None  # (V,)
            if anti is not None:
                step = Step(t, ids[:t].unsqueeze(0), lm_logp[t : t + 1], logp[t : t + 1])
                scores = anti(logp[t : t + 1], step)[0]  # (V,)
                applies = torch.ones_like(scores, dtype=torch.bool) if anti.applied is None else anti.applied[0]
            steps.append(_token_step(bot, t, tokens, logp[t], lm_logp[t] if anti else None, scores, applies,
                                     k, cfg.min_len))
    return steps


def _token_step(bot: Bot, t: int, tokens: list[int], logp: Tensor, lm_logp: Tensor | None, penalised: Tensor,
                applies: Tensor | None, k: int, min_len: int) -> TokenStep:
    """One step of :func:`token_view` from its (V,) rows."""
    allowed = logp.clone()  # (V,)
    allowed[list(NEVER_GENERATED)] = float("-inf")
    if t < min_len:
        allowed[EOS_ID] = float("-inf")
    top = torch.topk(allowed, min(k, int(torch.isfinite(allowed).sum()))).indices.tolist()  # (k,) best first

    def choice(i: int, rank: int) -> TokenChoice:
        lp = float(logp[i])
        return TokenChoice(i, bot.tokenizer.id_to_token(i), rank, float(torch.exp(logp[i])), lp,
                           float(lm_logp[i]) if lm_logp is not None else None,
                           float(penalised[i]) if lm_logp is not None else None,
                           bool(applies[i]) if applies is not None else False)

    own = tokens[t]
    own_rank = int((allowed > allowed[own]).sum()) + 1
    return TokenStep(t, tokens[:t], choice(own, own_rank), [choice(i, r) for r, i in enumerate(top, start=1)])
