"""The decoding engine on scripted models (hand-written probability tables -> exact hypotheses and scores) and
on tiny random models (invariants: K=1 beam == greedy, large-K beam == exhaustive search, batched == single)."""

import copy
import itertools
import json
import math
import typing
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import A, B, C, D, E, Scripted, V, classic_table, decode, favours_a, flat_table, lm_loves_a, tiny_models

from core.corpora import normalize_text
from core.decoding import (
    STRATEGIES,
    AntiLM,
    BanTokens,
    DecodeConfig,
    Hypothesis,
    LengthBonus,
    MinLength,
    NoRepeatNGram,
    Reply,
    Step,
    build_modifiers,
    encode_prefix,
    generate,
    sequence_logprobs,
    top_k_filter,
    top_p_filter,
    wide_topk,
)
from core.errors import SettingError
from core.model import _PACKED, PACK_MIN_NUMEL, Decoder, LanguageModel, ModelConfig, Seq2Seq, packed_linear
from core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, train_tokenizer

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- scripted models


# ----------------------------------------------------------------------------- exact hypotheses and scores


def test_beam_returns_the_expected_hypotheses_and_scores():
    [r] = decode(Scripted(classic_table), DecodeConfig(strategy="beam", beam_size=2, nbest=2, max_len=3))
    assert [h.tokens for h in r.nbest] == [[B, E], [A, B, E]]
    assert [h.score for h in r.nbest] == pytest.approx([math.log(0.36), math.log(0.175)], abs=1e-6)
    assert r.nbest[0].logprobs == pytest.approx([math.log(0.4), math.log(0.9)], abs=1e-6)
    assert (r.tokens, r.score, r.logprobs) == (r.nbest[0].tokens, r.nbest[0].score, r.nbest[0].logprobs)


def test_greedy_takes_the_locally_best_token():
    [r] = decode(Scripted(classic_table), DecodeConfig(strategy="greedy", max_len=3))
    assert r.tokens == [A, B, E]
    assert r.score == pytest.approx(math.log(0.175), abs=1e-6)
    assert len(r.nbest) == 1


def test_max_len_ends_hypotheses_without_eos():
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=2, nbest=2, max_len=2))
    assert [h.tokens for h in r.nbest] == [[B, E], [A, B]]
    assert r.nbest[1].score == pytest.approx(math.log(0.175), abs=1e-6)


def test_min_len_blocks_eos():
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=2, nbest=1, max_len=3, min_len=2))
    assert r.tokens == [A, B, E]


def test_reply_carries_aligned_details():
    src = [[A, B, C]]
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=3, nbest=3, max_len=3), src=src)
    assert len(r.token_strs) == len(r.logprobs) == len(r.attention) == len(r.tokens)
    assert all(len(row) == 3 and sum(row) == pytest.approx(1.0) for row in r.attention)
    assert r.source_tokens == [str(A), str(B), str(C)]
    assert r.score == pytest.approx(sum(r.logprobs))
    assert r.settings == DecodeConfig(beam_size=3, nbest=3, max_len=3).to_dict()
    assert r.latency_s > 0
    assert [h.score for h in r.nbest] == sorted((h.score for h in r.nbest), reverse=True)


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_a_search_with_every_token_blocked_ends_with_an_empty_reply(strategy):
    cfg = DecodeConfig(strategy=strategy, beam_size=3, nbest=3, max_len=6, min_len=6, no_repeat_ngram=1, seed=0)
    [r] = decode(Scripted(flat_table), cfg)  # 4 words, each usable once, </s> blocked for 6 tokens
    assert (r.tokens, r.text, r.nbest, r.score) == ([], "", [], -math.inf)


# ----------------------------------------------------------------------------- the JSON form of a reply


def strict_json(data):
    """``data`` through strict JSON: dumping refuses NaN and infinities, loading refuses their spellings."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(json.dumps(data, allow_nan=False), parse_constant=refuse)


def numbers_in(data):
    """Every int and float in nested dicts and lists."""
    if isinstance(data, dict):
        return [x for v in data.values() for x in numbers_in(v)]
    if isinstance(data, list):
        return [x for v in data for x in numbers_in(v)]
    return [data] if isinstance(data, (int, float)) and not isinstance(data, bool) else []


def test_to_json_writes_every_non_finite_number_as_null():
    inf, nan = math.inf, math.nan
    parts = {"logp": -inf, "antilm": 0.25, "bonus": nan, "mmi": inf}
    best = Hypothesis([A, B, E], "a b", -inf, [-0.5, -inf, -1.0], parts, ["a", "b", "</s>"])
    other = Hypothesis([A], "a", nan, [nan])  # no parts, no pieces
    r = Reply(text="a b", tokens=[A, B, E], token_strs=["a", "b", "</s>"], logprobs=[-0.5, -inf, -1.0], score=-inf,
              nbest=[best, other], attention=[[1.0], [nan], [0.5]], source_tokens=["x"], latency_s=0.01234,
              settings=DecodeConfig().to_dict(), trace=[{"step": 0, "score": -inf, "parts": {"logp": -inf}}])
    data = r.to_json()
    assert strict_json(data) == data
    assert all(math.isfinite(x) for x in numbers_in(data))
    assert data["score"] is None and data["logprobs"] == [-0.5, None, -1.0]
    assert data["parts"] == {"logp": None, "antilm": 0.25, "bonus": None, "mmi": None}
    assert data["nbest"][0] == {"text": "a b", "score": None, "tokens": ["a", "b", "</s>"], "token_ids": [A, B, E],
                                "logprobs": [-0.5, None, -1.0], "parts": data["parts"]}
    assert data["nbest"][1] == {"text": "a", "score": None, "tokens": [str(A)], "token_ids": [A], "logprobs": [None],
                                "parts": None}
    assert data["attention"] == [[1.0], [None], [0.5]] and data["trace"] == [{"step": 0, "score": None,
                                                                             "parts": {"logp": None}}]
    assert data["tokens"] == ["a", "b", "</s>"] and data["token_ids"] == [A, B, E]
    assert data["settings"] == DecodeConfig().to_dict() and data["latency_s"] == 0.01234
    rounded = r.to_json(digits=2)
    assert rounded["latency_s"] == 0.01 and rounded["logprobs"] == [-0.5, None, -1.0]
    assert "trace" not in Reply(**{**r.__dict__, "trace": None}).to_json()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_reply_no_search_could_reach_is_strict_json_with_a_null_score(strategy):
    cfg = DecodeConfig(strategy=strategy, beam_size=3, nbest=3, max_len=6, min_len=6, no_repeat_ngram=1)
    [r] = decode(Scripted(flat_table), cfg)  # every continuation blocked: the score is -inf
    assert r.score == -math.inf
    data = strict_json(r.to_json())
    assert data["score"] is None and data["parts"] is None and data["nbest"] == [] and data["text"] == ""


def test_a_real_reply_to_json_keeps_its_numbers():
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=3, nbest=3, max_len=3), src=[[A, B, C]])
    data = strict_json(r.to_json())
    assert data["score"] == pytest.approx(r.score) and data["logprobs"] == pytest.approx(r.logprobs)
    assert [h["score"] for h in data["nbest"]] == pytest.approx([h.score for h in r.nbest])
    assert data["parts"] == pytest.approx(r.nbest[0].parts)
    assert [h["tokens"] for h in data["nbest"]] == [[str(t) for t in h.tokens] for h in r.nbest]


# ----------------------------------------------------------------------------- modifiers on a hand-made distribution


def hand_scores():
    return torch.log(torch.tensor([[0.05, 0.05, 0.1, 0.05, 0.4, 0.2, 0.1, 0.05]] * 2))  # (N=2, V=8)


def test_antilm_modifier_subtracts_the_lm_only_before_gamma():
    scores, lm = hand_scores(), torch.log(torch.full((2, V), 1 / V))
    mod = AntiLM(0.5, gamma=2)
    assert torch.equal(mod(scores, Step(1, None, lm)), scores - 0.5 * lm)
    assert torch.equal(mod(scores, Step(2, None, None)), scores)


def test_length_bonus_rewards_every_token_but_eos():
    scores = hand_scores()
    out = LengthBonus(0.3)(scores, Step(0, None, None))
    assert torch.equal(out[:, E], scores[:, E])
    others = [i for i in range(V) if i != E]
    assert torch.allclose(out[:, others], scores[:, others] + 0.3)


def test_min_length_and_ban_tokens_set_minus_infinity():
    scores = hand_scores()
    assert torch.isneginf(MinLength(2)(scores, Step(1, None, None))[:, E]).all()
    assert torch.equal(MinLength(2)(scores, Step(2, None, None)), scores)
    banned = BanTokens()(scores, Step(0, None, None))
    assert torch.isneginf(banned[:, [PAD_ID, BOS_ID, UNK_ID]]).all()
    assert torch.isfinite(banned[:, [E, A, B, C, D]]).all()


def test_no_repeat_ngram_blocks_only_completed_ngrams():
    scores = hand_scores()
    prefix = torch.tensor([[A, B, C, A], [A, B, C, D]])  # row 0 ends with a: "a b" was seen -> block b
    out = NoRepeatNGram(2)(scores, Step(4, prefix, None))
    assert torch.isneginf(out[0, B]) and torch.isfinite(out[0]).sum() == V - 1
    assert torch.equal(out[1], scores[1])
    out1 = NoRepeatNGram(1)(scores, Step(4, prefix, None))
    assert torch.isneginf(out1[0, [A, B, C]]).all() and torch.isfinite(out1[0, D])


def test_top_k_and_top_p_filters():
    logits = hand_scores()
    assert torch.isfinite(top_k_filter(logits, 2)[0]).nonzero().flatten().tolist() == [A, B]
    # probabilities .4, .2, .1, .1 ...: the mass before c is .6 < .65, before the next .1 token it is .7
    kept = torch.isfinite(top_p_filter(logits, 0.65)[0]).nonzero().flatten().tolist()
    assert sorted(kept) in ([E, A, B], [A, B, C])  # one of the two 0.1 tokens
    assert torch.isfinite(top_p_filter(logits, 0.01)[0]).nonzero().flatten().tolist() == [A]


def test_zero_weights_add_no_modifier():
    mods = build_modifiers(DecodeConfig(antilm=0.0, n_bonus=0.0, min_len=0))
    assert [type(m) for m in mods] == [BanTokens]


# ----------------------------------------------------------------------------- anti-LM and length bonus in the search


@pytest.mark.parametrize("gamma, expected", [(0, [A, A, A, A]), (1, [B, A, A, A]), (2, [B, B, A, A])])
def test_antilm_demotes_the_lm_favourite_only_in_the_first_gamma_tokens(gamma, expected):
    cfg = DecodeConfig(beam_size=3, nbest=1, max_len=4, min_len=4, antilm=0.5, gamma=gamma)
    [r] = decode(Scripted(favours_a), cfg, lm=Scripted(lm_loves_a))
    assert r.tokens == expected
    penalty = sum(-0.5 * math.log(lm_loves_a(0, ())[t]) for t in expected[:gamma])
    assert r.score == pytest.approx(sum(math.log(favours_a(0, ())[t]) for t in expected) + penalty, abs=1e-5)


def test_antilm_zero_and_n_bonus_zero_are_exactly_plain_beam():
    torch.manual_seed(0)
    model, lm = tiny_models()
    src = [[5, 9, 12, 7], [20, 21]]
    plain = generate(model, src, DecodeConfig(beam_size=5))

    class NeverCalled:
        def init_state(self, *a):
            raise AssertionError("the LM must not run when antilm=0")

    zero = generate(model, src, DecodeConfig(beam_size=5, antilm=0.0, gamma=5, n_bonus=0.0), lm=NeverCalled())
    for p, z in zip(plain, zero):
        assert [(h.tokens, h.score, h.logprobs) for h in p.nbest] == [(h.tokens, h.score, h.logprobs) for h in z.nbest]


def test_lm_steps_only_during_the_first_gamma_tokens():
    lm = Scripted(lm_loves_a)
    decode(Scripted(favours_a), DecodeConfig(beam_size=3, nbest=1, max_len=8, min_len=8, antilm=0.3, gamma=3), lm=lm)
    assert lm.calls == 3


def fading_words(key, prefix):
    """</s> 0.3; a 0.7 * exp(-0.1 n) at position n (the rest on <unk>, which is never generated)."""
    a = 0.7 * math.exp(-0.1 * len(prefix))
    return {E: 0.3, A: a, UNK_ID: 0.7 - a}


def test_n_bonus_lengthens_replies_monotonically():
    lengths = []
    for bonus in [i / 10 for i in range(11)]:
        [r] = decode(Scripted(fading_words), DecodeConfig(beam_size=10, max_len=12, n_bonus=bonus))
        lengths.append(len([t for t in r.tokens if t != E]))
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
    assert lengths == [1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7]  # words while log a(n) + bonus > 0


# ----------------------------------------------------------------------------- invariants on tiny real models


def argmax_loop(model, src, max_len):
    """Greedy decoding written out plainly, as the oracle for the engine's greedy."""
    mem = model.encode(torch.tensor([src]), torch.tensor([len(src)]))
    tok, state, out = torch.tensor([BOS_ID]), mem.state, []
    for _ in range(max_len):
        logp, state, _ = model.decode_step(tok, state, mem)
        logp[0, [PAD_ID, BOS_ID, UNK_ID]] = -math.inf
        if not out:
            logp[0, EOS_ID] = -math.inf  # min_len = 1
        tok = logp.argmax(-1)
        out.append(int(tok))
        if out[-1] == EOS_ID:
            break
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_beam_equals_greedy(seed):
    model, _ = tiny_models(seed=seed)
    src = [[5, 9, 12, 7], [20, 21], [30, 31, 32]]
    greedy = generate(model, src, DecodeConfig(strategy="greedy", max_len=15))
    beam1 = generate(model, src, DecodeConfig(strategy="beam", beam_size=1, nbest=1, max_len=15))
    for s, g, b in zip(src, greedy, beam1, strict=True):
        assert g.tokens == b.tokens == argmax_loop(model, s, 15)
        assert g.score == b.score
    scripted = Scripted(classic_table)
    assert decode(scripted, DecodeConfig(beam_size=1, nbest=1))[0].tokens == [A, B, E]


@torch.no_grad()
def exhaustive(model, lm, src, cfg, words):
    """Score every reply over ``words`` up to cfg.max_len with the search objective; best first."""
    seqs = [list(w) + [EOS_ID] for n in range(cfg.min_len, cfg.max_len) for w in itertools.product(words, repeat=n)]
    seqs += [list(w) for w in itertools.product(words, repeat=cfg.max_len)]  # cut at max_len
    tgt_in = torch.tensor([[BOS_ID] + s[:-1] + [PAD_ID] * (cfg.max_len - len(s)) for s in seqs])  # (M, T)
    src_t = torch.tensor([src] * len(seqs))
    logp = torch.log_softmax(model(src_t, torch.tensor([len(src)] * len(seqs)), tgt_in), -1)  # (M, T, V)
    lm_logp = torch.log_softmax(lm(tgt_in), -1)
    scored = []
    for i, s in enumerate(seqs):
        score = 0.0
        for k, t in enumerate(s):
            score += float(logp[i, k, t]) + (cfg.n_bonus if t != EOS_ID else 0.0)
            if k < cfg.gamma:
                score -= cfg.antilm * float(lm_logp[i, k, t])
        scored.append((score, s))
    return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("antilm, n_bonus", [(0.0, 0.0), (0.7, 0.0), (0.0, 0.8), (0.5, 0.5)])
def test_large_k_beam_equals_exhaustive_search(antilm, n_bonus):
    model, lm = tiny_models(vocab=7, seed=3)  # words 4, 5, 6: 120 replies of up to 4 tokens
    cfg = DecodeConfig(beam_size=50, nbest=5, max_len=4, antilm=antilm, gamma=2, n_bonus=n_bonus)
    [r] = generate(model, [[4, 5, 6]], cfg, lm=lm)
    best = exhaustive(model, lm, [4, 5, 6], cfg, words=[4, 5, 6])[:5]
    assert [h.tokens for h in r.nbest] == [s for _, s in best]
    assert [h.score for h in r.nbest] == pytest.approx([sc for sc, _ in best], abs=1e-4)


@pytest.mark.parametrize("overrides", [
    dict(strategy="greedy"),
    dict(strategy="beam", beam_size=6),
    dict(strategy="beam", beam_size=4, antilm=0.5, gamma=3, n_bonus=0.4, no_repeat_ngram=2),
    dict(strategy="beam", beam_size=4, length_norm=True, min_len=3),
])
def test_batched_equals_one_at_a_time(overrides):
    model, lm = tiny_models(seed=4)
    src = [[5, 9, 12, 7, 8, 9, 10], [20, 21], [30, 31, 32], [40]]
    cfg = DecodeConfig(max_len=12).with_overrides(**overrides)
    together = generate(model, src, cfg, lm=lm)
    assert len(together) == len(src)
    for s, r in zip(src, together, strict=True):
        [alone] = generate(model, [s], cfg, lm=lm)
        assert [h.tokens for h in r.nbest] == [h.tokens for h in alone.nbest]
        assert [h.score for h in r.nbest] == pytest.approx([h.score for h in alone.nbest], abs=1e-4)
        assert len(r.attention[0]) == len(s)


PROMPTS = ["hi, how are you?", "what do you do for a living?", "do you like dogs or cats better?",
           "i just got back from a trip to japan", "ok", "what is your favorite movie and why?",
           "my car broke down again today", "thanks!"]


@pytest.fixture(scope="module")
def shipped_bots():
    from helpers import SHIPPED

    from core.bots import load_bots
    return load_bots(SHIPPED, device="cpu")


@pytest.mark.parametrize("overrides", [
    dict(),  # each bot's own settings: greedy, beam, anti-LM, RL (anti-LM too)
    dict(nbest=5, no_repeat_ngram=2),
    dict(strategy="diverse_beam", num_groups=2, diversity_penalty=0.5, nbest=4),
    dict(strategy="contrastive", top_k=4, penalty_alpha=0.6),
])
def test_done_prompts_leave_the_batch_and_the_others_decode_as_if_alone(shipped_bots, overrides):
    """Real models: replies end at different steps, the done prompts' rows are dropped from the steps left (fewer
    rows reach the model), and every reply, n-best score, score part, log-prob and attention row is unchanged."""
    for name, bot in shipped_bots.items():
        cfg = bot.settings(**overrides)
        src = [bot.encode_prompt(p) for p in PROMPTS]
        rows = []
        step = bot.model.decode_step

        def counting(tok, state, memory, *, return_hidden=False, rows=rows, step=step):
            rows.append(tok.numel())
            return step(tok, state, memory, return_hidden=return_hidden)

        bot.model.decode_step = counting
        try:
            together = generate(bot.model, src, cfg, lm=bot.lm, tokenizer=bot.tokenizer)
        finally:
            del bot.model.decode_step
        assert len(together) == len(src)
        width = rows[1] // len(src)
        assert len(set(rows[1:])) > 1 and rows[-1] < rows[1] and rows[-1] % width == 0, (name, rows)
        for s, r in zip(src, together, strict=True):
            [alone] = generate(bot.model, [s], cfg, lm=bot.lm, tokenizer=bot.tokenizer)
            assert r.tokens == alone.tokens, name
            assert [h.tokens for h in r.nbest] == [h.tokens for h in alone.nbest], name
            for h1, h2 in zip(r.nbest, alone.nbest):
                assert h1.score == pytest.approx(h2.score, abs=1e-4)
                assert h1.logprobs == pytest.approx(h2.logprobs, abs=1e-4)
                assert h1.parts == pytest.approx(h2.parts, abs=1e-4)
            assert torch.tensor(r.attention) == pytest.approx(torch.tensor(alone.attention), abs=1e-5)


# ----------------------------------------------------------------------------- the inference path of real-size models

PACKS = torch.backends.mkldnn.is_available()  # CPU builds with oneDNN pack the output projection


def wide_models(cell="gru", seed=0):
    """Models whose output projection (4096 x 256 = PACK_MIN_NUMEL entries) takes the packed GEMM."""
    torch.manual_seed(seed)
    base = dict(vocab_size=4096, emb_dim=256, hidden=256, cell=cell, dropout=0.1)
    assert base["vocab_size"] * base["hidden"] >= PACK_MIN_NUMEL
    return Seq2Seq(ModelConfig(**base)).eval(), LanguageModel(ModelConfig(kind="lm", **base)).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("rows", [1, 5])
def test_inference_step_equals_the_training_step(cell, rows):
    model, lm = wide_models(cell)
    src = torch.randint(4, 4096, (rows, 6))
    mem = model.encode(src, torch.full((rows,), 6))
    tok = torch.randint(4, 4096, (rows,))
    ref = model.decode_step(tok, mem.state, mem)  # autograd on: the training path
    ref_lm = lm.decode_step(tok, lm.init_state(rows))
    with torch.inference_mode():
        fast = model.decode_step(tok, mem.state, mem)
        fast_lm = lm.decode_step(tok, lm.init_state(rows))
    assert ref[0].grad_fn is not None and not fast[0].requires_grad
    states = [torch.stack(s) if isinstance(s, tuple) else s for s in (ref[1], fast[1], ref_lm[1], fast_lm[1])]
    for a, b in [(ref[0], fast[0]), (ref[2], fast[2]), (ref_lm[0], fast_lm[0]), states[:2], states[2:]]:
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=0)
    assert (model.decoder.out.weight in _PACKED) == (PACKS and rows >= 2)


def test_the_training_path_is_kept_under_autograd_and_in_train_mode(monkeypatch):
    model, _ = wide_models()
    mem = model.encode(torch.randint(4, 4096, (3, 5)), torch.full((3,), 5))
    tok = torch.randint(4, 4096, (3,))

    def no_inference_path(*args):
        raise AssertionError("the inference path ran")

    monkeypatch.setattr(Decoder, "step", no_inference_path)
    model.decode_step(tok, mem.state, mem)  # autograd on
    with torch.no_grad():
        model.train()
        model.decode_step(tok, mem.state, mem)  # dropout on
    assert model.decoder.out.weight not in _PACKED


def test_packed_linear_equals_linear_and_follows_weight_updates():
    w = (torch.randn(4096, 256) / 16).requires_grad_()  # the scale of a trained projection: outputs of about 1
    b, x = torch.randn(4096), torch.randn(10, 256)
    y = packed_linear(x, w, b)
    assert y.grad_fn is not None and torch.equal(y, torch.nn.functional.linear(x, w, b)) and w not in _PACKED
    with torch.no_grad():
        assert torch.allclose(packed_linear(x, w, b), x @ w.T + b, atol=1e-5, rtol=0)
        assert (w in _PACKED) == PACKS
        w.mul_(-2)  # an optimizer step or load_state_dict updates the weight in place: it is packed again
        assert torch.allclose(packed_linear(x, w, b), x @ w.T + b, atol=1e-5, rtol=0)


def test_a_decoded_model_still_deep_copies_and_saves_only_its_parameters():
    model, _ = wide_models()
    keys = set(model.state_dict())
    with torch.inference_mode():
        generate(model, [[5, 6, 7], [8, 9]], DecodeConfig(strategy="greedy", max_len=3))
    assert set(copy.deepcopy(model).state_dict()) == set(model.state_dict()) == keys


def test_invariants_hold_on_the_inference_path():
    model, lm = wide_models(seed=1)
    src = [[5, 9, 12, 7], [20, 21], [30, 31, 32]]
    cfg = DecodeConfig(strategy="greedy", max_len=8)
    greedy = generate(model, src, cfg)  # 3 rows: the packed projection
    beam1 = generate(model, src, cfg.with_overrides(strategy="beam", beam_size=1, nbest=1))
    for s, g, b in zip(src, greedy, beam1, strict=True):
        assert g.tokens == b.tokens == argmax_loop(model, s, 8)  # argmax_loop: the training path, one row
        assert g.score == b.score
    cfg = DecodeConfig(strategy="beam", beam_size=4, nbest=3, max_len=8, antilm=0.5, gamma=3)
    for s, r in zip(src, generate(model, src, cfg, lm=lm), strict=True):
        [alone] = generate(model, [s], cfg, lm=lm)
        assert [h.tokens for h in r.nbest] == [h.tokens for h in alone.nbest]
        assert [h.score for h in r.nbest] == pytest.approx([h.score for h in alone.nbest], abs=1e-4)


def test_wide_topk_equals_topk():
    torch.manual_seed(0)
    for rows, W, k in [(1, 80000, 20), (3, 50021, 20), (2, 16384, 2), (1, 8000, 20)]:
        x = torch.randn(rows, W).mul(3).round()  # many ties
        x[:, torch.randint(0, W, (W // 2,))] = -math.inf
        values, cols = wide_topk(x, k)
        assert torch.equal(values, x.topk(k, dim=1).values)
        assert torch.equal(x.gather(1, cols), values)
        assert all(len(set(row)) == k for row in cols.tolist())
    dead = torch.full((1, 80000), -math.inf)
    assert torch.isneginf(wide_topk(dead, 20)[0]).all()


# ----------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible():
    model, _ = tiny_models(seed=5)
    src = [[5, 9, 12], [20, 21]]
    cfg = DecodeConfig(strategy="sample", beam_size=3, nbest=3, temperature=1.5, seed=123)
    runs = [[[h.tokens for h in r.nbest] for r in generate(model, src, cfg)] for _ in range(2)]
    assert runs[0] == runs[1]
    other = [[h.tokens for h in r.nbest] for r in generate(model, src, cfg.with_overrides(seed=124))]
    assert other != runs[0]


@pytest.mark.parametrize("overrides, allowed", [
    (dict(top_k=2), {A, B}),
    (dict(top_p=0.75), {A, B, C}),  # mass before c is 0.7 < 0.75; before d it is 0.85
    (dict(top_k=3, top_p=0.5), {A, B}),
])
def test_top_k_and_top_p_never_leave_the_allowed_set(overrides, allowed):
    cfg = DecodeConfig(strategy="sample", beam_size=20, nbest=20, max_len=6, seed=7, **overrides)
    [r] = decode(Scripted(flat_table), cfg)
    used = {t for h in r.nbest for t in h.tokens}
    assert used <= allowed and len(used) == len(allowed)


# ----------------------------------------------------------------------------- MMI-bidi


def test_mmi_rerank_uses_the_backward_model():
    model, _ = tiny_models(seed=6)
    backward, _ = tiny_models(seed=7)
    src = [5, 9, 12]
    lam = 0.6
    [plain] = generate(model, [src], DecodeConfig(beam_size=5, nbest=5, max_len=8))
    [mmi] = generate(model, [src], DecodeConfig(beam_size=5, nbest=5, max_len=8, mmi_lambda=lam), backward=backward)
    assert sorted(h.tokens for h in mmi.nbest) == sorted(h.tokens for h in plain.nbest)
    for h in mmi.nbest:
        with torch.no_grad():
            back = float(sequence_logprobs(backward, [[t for t in h.tokens if t != EOS_ID]], [src])[0])
        assert h.score == pytest.approx((1 - lam) * sum(h.logprobs) + lam * back, abs=1e-4)
    assert [h.score for h in mmi.nbest] == sorted((h.score for h in mmi.nbest), reverse=True)
    assert mmi.tokens == mmi.nbest[0].tokens


def test_missing_models_and_bad_sources_are_clear_errors():
    model, _ = tiny_models()
    with pytest.raises(ValueError, match="antilm=0.5 needs a language model"):
        generate(model, [[5]], DecodeConfig(antilm=0.5))
    with pytest.raises(ValueError, match="mmi_lambda=0.5 needs a backward model"):
        generate(model, [[5]], DecodeConfig(mmi_lambda=0.5))
    with pytest.raises(ValueError, match="source sequence 1 is empty"):
        generate(model, [[5], []], DecodeConfig())
    with pytest.raises(ValueError, match="outside 0..59"):
        generate(model, [[5, 60]], DecodeConfig())


# ----------------------------------------------------------------------------- DecodeConfig


@pytest.mark.parametrize("kw, message", [
    (dict(beam_size=0), r"beam_size=0 is out of range: allowed \[1, 50\]"),
    (dict(beam_size=51), r"beam_size=51 is out of range"),
    (dict(beam_size="10"), r"beam_size='10': must be an int"),
    (dict(beam_size=2.5), r"beam_size=2.5: must be an int"),
    (dict(beam_size=4, nbest=5), r"nbest=5 is out of range: allowed \[1, beam_size \(= 4\)\]"),
    (dict(max_len=0), r"max_len=0 is out of range: allowed \[1, 100\]"),
    (dict(max_len=5, min_len=6), r"min_len=6 is out of range: allowed \[0, max_len \(= 5\)\]"),
    (dict(antilm=1.5), r"antilm=1.5 is out of range: allowed \[0.0, 1.0\]"),
    (dict(antilm=float("nan")), r"antilm=nan: must be a finite number"),
    (dict(n_bonus=-0.1), r"n_bonus=-0.1 is out of range"),
    (dict(temperature=0), r"temperature=0 is out of range: allowed \(0.0, 5.0\]"),
    (dict(top_p=0.0), r"top_p=0.0 is out of range"),
    (dict(top_k=-1), r"top_k=-1 is out of range"),
    (dict(strategy="nucleus"), r"strategy='nucleus': choose one of"),
    (dict(length_norm=1), r"length_norm=1: must be True or False"),
    (dict(seed=1.5), r"seed=1.5: must be an int or None"),
    (dict(gamma=True), r"gamma=True: must be an int"),
])
def test_decode_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kw)
    with pytest.raises(ValueError, match=message):
        DecodeConfig().with_overrides(**kw)


_TYPES = typing.get_type_hints(DecodeConfig)
# the numeric settings with a fixed range: (name, lo, hi) from the field metadata
RANGED = [(f.name, f.metadata["lo"], f.metadata["hi"]) for f in fields(DecodeConfig)
          if _TYPES[f.name] in (int, float) and f.metadata["lo"] is not None
          and isinstance(f.metadata["hi"], (int, float))]


@pytest.mark.parametrize("name, lo, hi", RANGED, ids=[r[0] for r in RANGED])
def test_a_bad_numeric_setting_raises_a_setting_error_with_its_field_and_range(name, lo, hi):
    for bad in (hi + 1, "1"):  # out of range, wrong type
        with pytest.raises(SettingError) as e:
            DecodeConfig().with_overrides(**{name: bad})
        assert isinstance(e.value, ValueError)
        assert (e.value.field, e.value.range) == (name, (lo, hi))


@pytest.mark.parametrize("kw, field, bounds", [
    (dict(beam_size=4, nbest=5), "nbest", (1, 4)),  # a bound naming another field: its value
    (dict(max_len=5, min_len=6), "min_len", (0, 5)),
    (dict(strategy="nucleus"), "strategy", None),
    (dict(length_norm=1), "length_norm", None),
    (dict(seed=1.5), "seed", None),
    (dict(length_norm=True, length_penalty=1.0), "length_norm", None),
    (dict(strategy="diverse_beam", beam_size=5, num_groups=2), "num_groups", None),
    (dict(strategy="contrastive", top_k=0), "top_k", None),
    (dict(beam=3), "beam", None),
    (dict(prefix="x" * 401), "prefix", None),
])
def test_setting_errors_name_the_setting_to_change(kw, field, bounds):
    with pytest.raises(SettingError) as e:
        DecodeConfig().with_overrides(**kw)
    assert (e.value.field, e.value.range) == (field, bounds)


@pytest.mark.parametrize("prefix", ["   ", "2", "4 " * 11])
def test_a_prefix_that_cannot_be_forced_names_the_prefix(prefix):
    with pytest.raises(SettingError) as e:
        encode_prefix(prefix, None, 10)
    assert e.value.field == "prefix"


def test_overrides_unknown_keys_and_dependent_bounds():
    with pytest.raises(ValueError, match=r"unknown decoding setting\(s\) \['beam'\]"):
        DecodeConfig().with_overrides(beam=3)
    cfg = DecodeConfig().with_overrides(beam_size=3, max_len=4)  # nbest 5 -> 3, min_len stays 1
    assert (cfg.beam_size, cfg.nbest, cfg.max_len, cfg.min_len) == (3, 3, 4, 1)
    assert DecodeConfig(min_len=10).with_overrides(max_len=4).min_len == 4
    with pytest.raises(ValueError, match="nbest=5"):
        DecodeConfig().with_overrides(beam_size=3, nbest=5)  # both given: the caller meant it


def test_help_on_every_field():
    from dataclasses import fields

    assert all(f.metadata["help"] for f in fields(DecodeConfig))


# ----------------------------------------------------------------------------- property test


@pytest.fixture(scope="module")
def real_parts():
    texts = ["hello there", "how are you doing today?", "i am fine thanks", "what about you", "see you later",
             "the weather is nice", "i like pizza and music", "where do you live?"] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    base = dict(vocab_size=tok.vocab_size, emb_dim=16, hidden=16, dropout=0.0)
    return tok, Seq2Seq(ModelConfig(**base)).eval(), LanguageModel(ModelConfig(kind="lm", **base)).eval(), \
        Seq2Seq(ModelConfig(kind="backward", **base)).eval()


CONFIG_FIELDS = {f.name: f for f in fields(DecodeConfig)}
CONFIG_TYPES = typing.get_type_hints(DecodeConfig)


def field_values(name: str, drawn: dict) -> st.SearchStrategy:
    """Values of DecodeConfig.<name> drawn from its metadata alone (choices, type, lo/hi, lo_open; a ``hi`` that
    names another field is that field's drawn value). A field of a new kind fails here, so it cannot go untested."""
    meta, typ = CONFIG_FIELDS[name].metadata, CONFIG_TYPES[name]
    hi = drawn[meta["hi"]] if isinstance(meta["hi"], str) else meta["hi"]
    if meta["choices"]:
        return st.sampled_from(sorted(meta["choices"]))
    if typ is bool:
        return st.booleans()
    if typ is str:
        return st.just(CONFIG_FIELDS[name].default) | st.text(max_size=hi)
    if typ == (int | None):
        return st.none() | st.integers(0, 2**32 - 1)
    if typ is int:
        return st.integers(meta["lo"], hi)
    if typ is float:
        return st.floats(meta["lo"], hi, exclude_min=meta["lo_open"], allow_nan=False)
    raise TypeError(f"no strategy for DecodeConfig.{name} ({typ}): teach field_values its metadata")


@st.composite
def decode_configs(draw):
    """Any valid DecodeConfig: every field drawn from its metadata; while settings that are each in range do not
    fit together, a drawn field (any of those off their default, picked at random) goes back to its default, so
    every side of a rule between two fields stays reachable (the defaults fit together)."""
    bounded_by_another = [n for n, f in CONFIG_FIELDS.items() if isinstance(f.metadata["hi"], str)]
    drawn: dict = {}
    for name in [n for n in CONFIG_FIELDS if n not in bounded_by_another] + bounded_by_another:
        drawn[name] = draw(field_values(name, drawn))
    while True:
        try:
            return DecodeConfig(**drawn)
        except SettingError:
            changed = sorted(n for n, v in drawn.items() if v != CONFIG_FIELDS[n].default)
            name = draw(st.sampled_from(changed))
            drawn[name] = CONFIG_FIELDS[name].default


def test_settings_at_the_edge_of_their_ranges_still_give_replies(real_parts):
    """Found by the metadata-drawn configs: a temperature far below float32's range (1e-99 read as 0 gave 0 / 0)
    and a top-p or typical-p mass that float32 reads as 0 (every token dropped) gave an error or an empty reply.
    A forced prefix that a blocking rule forbids is no reply at all (score -inf), by design."""
    tok, model, lm, _ = real_parts
    ids = tok.encode("hello there")
    greedy = generate(model, [ids], DecodeConfig(strategy="greedy", max_len=8))[0].tokens
    for strategy in ("sample", "delayed_beam"):
        cold = DecodeConfig(strategy=strategy, beam_size=2, nbest=1, temperature=1e-99, max_len=8, seed=0)
        assert generate(model, [ids], cold)[0].tokens == greedy  # a near-zero temperature is the argmax
    loud_unk = copy.deepcopy(model)  # its top token is always <unk>, which no decoder emits
    with torch.no_grad():  # the same near-zero temperature in teacher-forced scoring (the RL policy's log-probs)
        loud_unk.decoder.out.bias[UNK_ID] += 100.0
        cold = sequence_logprobs(loud_unk, [ids], [[t for t in greedy if t != EOS_ID]], temperature=1e-300,
                                 eos=[greedy[-1] == EOS_ID])  # a reply cut at max_len never drew its </s>
    assert torch.isfinite(cold).all() and cold.item() == pytest.approx(0.0, abs=1e-4)  # greedy's path: p = 1 each
    for tiny in ({"top_p": 1e-81}, {"typical_p": 5e-324}):
        [r] = generate(model, [ids], DecodeConfig(strategy="sample", beam_size=2, nbest=1, max_len=8, seed=0, **tiny))
        assert r.tokens and r.score > float("-inf")
    forced = encode_prefix("ha ha ha", tok, 30)
    assert len(set(forced)) < len(forced)
    [r] = generate(model, [ids], DecodeConfig(prefix="ha ha ha", no_repeat_ngram=1, max_len=20), tokenizer=tok)
    assert (r.tokens, r.nbest, r.score) == ([], [], float("-inf"))


def test_the_config_strategy_draws_every_field_over_its_whole_range():
    """Every field of DecodeConfig gets a strategy from its metadata, every field takes at least two values over
    the drawn configs (so a rule between fields cannot pin one), and every registered strategy is drawn."""
    seen: dict = {name: set() for name in CONFIG_FIELDS}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(cfg=decode_configs())
    def collect(cfg):
        for name in CONFIG_FIELDS:
            seen[name].add(getattr(cfg, name))

    collect()
    assert all(len(values) >= 2 for values in seen.values()), {n: v for n, v in seen.items() if len(v) < 2}
    assert seen["strategy"] == set(STRATEGIES)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200), cfg=decode_configs())
def test_any_text_and_any_valid_settings_give_a_reply_within_max_len(real_parts, text, cfg):
    tok, model, lm, backward = real_parts
    ids = tok.encode(normalize_text(text))[-40:] or [UNK_ID]
    if cfg.prefix:
        try:
            forced = encode_prefix(cfg.prefix, tok, cfg.max_len)
        except SettingError as e:  # a prefix with nothing to encode, or too long: a clean error naming it
            assert e.field == "prefix"
            with pytest.raises(SettingError, match="prefix"):
                generate(model, [ids], cfg, lm=lm, backward=backward, tokenizer=tok)
            cfg = cfg.with_overrides(prefix="")
        else:
            [r] = generate(model, [ids], cfg, lm=lm, backward=backward, tokenizer=tok)
            # the reply starts with the forced prefix, or none can (a blocking rule forbids one of its tokens)
            assert r.tokens[: len(forced)] == forced or (r.nbest == [] and r.score == float("-inf"))
    [r] = generate(model, [ids], cfg, lm=lm, backward=backward, tokenizer=tok)
    assert isinstance(r.text, str)
    assert all(sum(h.parts.values()) == pytest.approx(h.score, rel=1e-4, abs=1e-3) for h in r.nbest)
    assert len(r.tokens) <= cfg.max_len
    assert len(r.nbest) <= cfg.nbest
    assert all(len(h.tokens) <= cfg.max_len for h in r.nbest)
    if r.tokens:
        assert len([t for t in r.tokens if t != EOS_ID]) >= min(cfg.min_len, cfg.max_len)
