"""Scripted stand-ins for the models, shared by the decoder tests: hand-written probability tables give exact
hypotheses and scores (``Scripted``), and tiny random real models (``tiny_models``) give invariants.

    >>> [r] = decode(Scripted(classic_table), DecodeConfig(strategy="beam", beam_size=2, max_len=3))
"""

import math

import torch

from core.decoding import generate
from core.model import LanguageModel, Memory, ModelConfig, Seq2Seq
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID

E, A, B, C, D = EOS_ID, 4, 5, 6, 7  # </s> and four word ids of the scripted models
V = 8


class Scripted:
    """Stand-in for Seq2Seq (and, with ``lm=True``, LanguageModel) whose next-token distribution is
    ``table(prompt, prefix) -> {token: prob}``: prompt is the first source id (0 for the LM), prefix the ids
    generated so far. Unlisted tokens get probability 0. The recurrent state (1, N, 2 + M) carries
    [prompt, length, prefix...], so the engine's row reordering moves prefixes like real hidden states."""

    M = 32

    def __init__(self, table, vocab=V):
        self.table, self.V, self.calls = table, vocab, 0

    def _state(self, keys):
        state = torch.zeros(1, len(keys), 2 + self.M, dtype=torch.long)
        state[0, :, 0] = keys
        return state

    def encode(self, src, src_lens):
        return Memory(src.unsqueeze(-1).float(), src != PAD_ID, self._state(src[:, 0]))

    def init_state(self, batch, device="cpu"):
        return self._state(torch.zeros(batch, dtype=torch.long))

    def _step(self, tok, state):
        self.calls += 1
        state = state.clone()
        logp = torch.full((tok.size(0), self.V), -math.inf)
        for i, t in enumerate(tok.tolist()):
            key, n = state[0, i, :2].tolist()
            if t != BOS_ID:
                state[0, i, 2 + n] = t
                n += 1
                state[0, i, 1] = n
            for w, p in self.table(key, tuple(state[0, i, 2 : 2 + n].tolist())).items():
                logp[i, w] = math.log(p) if p > 0 else -math.inf
        return logp, state

    def decode_step(self, tok, state, memory=None):
        logp, state = self._step(tok, state)
        if memory is None:  # LanguageModel interface
            return logp, state
        attn = memory.mask.float() / memory.mask.sum(1, keepdim=True)  # (N, S) uniform over the source
        return logp, state, attn


def classic_table(key, prefix):
    """Greedy takes a (0.5) and ends with a b </s> (0.175); beam finds b </s> (0.36)."""
    return {
        (): {A: 0.5, B: 0.4, C: 0.1},
        (A,): {E: 0.3, A: 0.1, B: 0.35, C: 0.25},
        (B,): {E: 0.9, A: 0.05, B: 0.05},
    }.get(prefix, {E: 1.0})


def decode(model, cfg, src=((A,),), **kw):
    return generate(model, [list(s) for s in src], cfg, **kw)


def favours_a(key, prefix):
    return {A: 0.5, B: 0.45, E: 0.05}


def lm_loves_a(key, prefix):
    return {A: 0.9, B: 0.05, E: 0.05}


def flat_table(key, prefix):
    return {E: 0.05, A: 0.4, B: 0.3, C: 0.15, D: 0.1}


def tiny_models(vocab=60, seed=0):
    torch.manual_seed(seed)
    base = dict(vocab_size=vocab, emb_dim=16, hidden=16, dropout=0.0)
    return Seq2Seq(ModelConfig(**base)).eval(), LanguageModel(ModelConfig(kind="lm", **base)).eval()
