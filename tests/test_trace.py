"""The search trace (every candidate of every step, kept / pruned / finished) and the score parts of each
hypothesis (they add up to its score), on a scripted table, on tiny random models and through Bot.respond."""

import math

import pytest
import torch
from scripted import A, B, C, E, Scripted, classic_table, decode, favours_a, lm_loves_a, tiny_models

import core.decoding.engine as engine
from core.decoding import DecodeConfig, generate

torch.set_num_threads(1)
log = math.log
PART_KEYS = {"logp", "antilm", "bonus", "diversity", "repetition", "mmi"}


def test_the_trace_of_a_scripted_beam_search():
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=2, nbest=2, max_len=3), trace=True)
    rows = [(x["step"], x["id"], x["parent"], x["token"], x["status"]) for x in r.trace]
    assert rows == [
        (0, 1, 0, A, "kept"), (0, 2, 0, B, "kept"), (0, 3, 0, C, "pruned"),  # </s> is blocked at step 0
        (1, 4, 2, E, "finished"), (1, 5, 1, B, "kept"), (1, 6, 1, E, "pruned"), (1, 7, 1, C, "kept"),
        (2, 8, 5, E, "finished"), (2, 9, 7, E, "finished"),
    ]
    by_id = {x["id"]: x for x in r.trace}
    assert by_id[4]["score"] == pytest.approx(log(0.36), abs=1e-6)
    assert by_id[6]["score"] == pytest.approx(log(0.15), abs=1e-6)  # a </s> ranked third of K=2: pruned
    assert by_id[9]["logp"] == pytest.approx(0.0) and by_id[9]["score"] == pytest.approx(log(0.125), abs=1e-6)
    assert by_id[7]["text"] == str(C)
    for x in r.trace:
        assert set(x["parts"]) == PART_KEYS
        assert sum(x["parts"].values()) == pytest.approx(x["score"], abs=1e-6)
    finished = sorted((x["score"] for x in r.trace if x["status"] == "finished"), reverse=True)
    assert finished[:2] == pytest.approx([h.score for h in r.nbest])


def test_trace_parts_show_where_the_anti_lm_changed_the_choice():
    cfg = DecodeConfig(beam_size=2, nbest=1, max_len=2, min_len=2, antilm=0.5, gamma=1)
    [r] = decode(Scripted(favours_a), cfg, lm=Scripted(lm_loves_a), trace=True)
    first = {x["token"]: x for x in r.trace if x["step"] == 0}
    assert first[A]["parts"]["antilm"] == pytest.approx(-0.5 * log(0.9), abs=1e-6)
    assert first[B]["parts"]["antilm"] == pytest.approx(-0.5 * log(0.05), abs=1e-6)
    assert first[B]["score"] > first[A]["score"]  # log .45 + 1.50 beats log .5 + 0.05
    second = [x for x in r.trace if x["step"] == 1]  # gamma=1: no penalty added after the first token
    assert all(x["parts"]["antilm"] == next(f for f in first.values() if f["id"] == x["parent"])["parts"]["antilm"]
               for x in second) and second
    assert r.tokens[0] == B


def test_trace_is_off_by_default_and_then_never_built(monkeypatch):
    def no_tracer(*args, **kwargs):
        raise AssertionError("a tracer was built with trace off")

    monkeypatch.setattr(engine, "_Tracer", no_tracer)
    [r] = decode(Scripted(classic_table), DecodeConfig(beam_size=2, nbest=2, max_len=3))
    assert r.trace is None
    with pytest.raises(AssertionError, match="tracer was built"):
        decode(Scripted(classic_table), DecodeConfig(beam_size=2, nbest=2, max_len=3), trace=True)


def test_trace_does_not_change_the_replies():
    model, lm = tiny_models(seed=3)
    src = [[5, 9, 12, 7], [20, 21]]
    for cfg in (DecodeConfig(beam_size=5, max_len=10, antilm=0.4, gamma=3, n_bonus=0.2),
                DecodeConfig(strategy="diverse_beam", beam_size=4, nbest=4, num_groups=2, diversity_penalty=1.0),
                DecodeConfig(strategy="sample", beam_size=3, nbest=3, seed=5, max_len=8),
                DecodeConfig(strategy="contrastive", top_k=3, penalty_alpha=0.5, max_len=8)):
        off = generate(model, src, cfg, lm=lm)
        on = generate(model, src, cfg, lm=lm, trace=True)
        for a, b in zip(off, on):
            assert [(h.tokens, h.score) for h in a.nbest] == [(h.tokens, h.score) for h in b.nbest]
            check_trace(b, cfg)


def check_trace(reply, cfg):
    """Structural truths of any trace: ids unique, parents earlier kept rows, at most C candidates per step,
    parts add up, and the best finished rows are the n-best (without MMI)."""
    kept, seen = {0}, set()
    per_step = {}
    for x in reply.trace:
        assert x["id"] not in seen and x["parent"] in kept
        seen.add(x["id"])
        per_step[x["step"]] = per_step.get(x["step"], 0) + 1
        if x["status"] == "kept":
            kept.add(x["id"])
        assert x["status"] in ("kept", "pruned", "finished")
        assert sum(x["parts"].values()) == pytest.approx(x["score"], abs=1e-4)
    width = {"contrastive": cfg.top_k, "sample": cfg.beam_size}.get(cfg.strategy, 2 * cfg.beam_size)
    assert max(per_step.values()) <= width
    if cfg.mmi_lambda == 0:
        finished = sorted((x["score"] for x in reply.trace if x["status"] == "finished"), reverse=True)
        assert finished[: len(reply.nbest)] == pytest.approx([h.score for h in reply.nbest], abs=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(),  # plain beam
    dict(antilm=0.6, gamma=3),
    dict(n_bonus=0.4),
    dict(mmi_lambda=0.5),
    dict(antilm=0.5, gamma=2, n_bonus=0.3, mmi_lambda=0.7),
    dict(length_norm=True, n_bonus=0.2),
    dict(length_penalty=0.8, repetition_penalty=1.4),
    dict(strategy="diverse_beam", num_groups=3, diversity_penalty=0.8),
    dict(strategy="sample", seed=3, min_p=0.05),
])
def test_parts_add_up_to_the_score(overrides):
    model, lm = tiny_models(seed=2)
    backward, _ = tiny_models(seed=7)
    cfg = DecodeConfig(beam_size=6, nbest=6, max_len=10).with_overrides(**overrides)
    for r in generate(model, [[5, 9, 12, 7], [20, 21]], cfg, lm=lm, backward=backward):
        assert r.nbest
        for h in r.nbest:
            assert set(h.parts) == PART_KEYS
            assert sum(h.parts.values()) == pytest.approx(h.score, abs=1e-4)
            assert h.parts["logp"] == pytest.approx(sum(h.logprobs), abs=1e-5)
            words = sum(t != E for t in h.tokens)
            if not (cfg.length_norm or cfg.length_penalty):
                assert h.parts["bonus"] == pytest.approx(cfg.n_bonus * words, abs=1e-6)
            if cfg.antilm == 0:
                assert h.parts["antilm"] == 0
            else:
                assert h.parts["antilm"] > 0  # the LM log-probs are negative: the penalty adds
            if cfg.mmi_lambda == 0:
                assert h.parts["mmi"] == 0


def test_mmi_part_is_what_the_rerank_changed():
    model, lm = tiny_models(seed=2)
    backward, _ = tiny_models(seed=7)
    cfg = DecodeConfig(beam_size=5, nbest=5, max_len=8, antilm=0.5, gamma=2)
    [plain] = generate(model, [[5, 9, 12]], cfg, lm=lm)
    [mmi] = generate(model, [[5, 9, 12]], cfg.with_overrides(mmi_lambda=0.6), lm=lm, backward=backward)
    search = {tuple(h.tokens): h for h in plain.nbest}
    for h in mmi.nbest:
        before = search[tuple(h.tokens)]
        assert {k: h.parts[k] for k in ("logp", "antilm", "bonus")} == pytest.approx(
            {k: before.parts[k] for k in ("logp", "antilm", "bonus")})
        assert h.parts["mmi"] == pytest.approx(h.score - before.score, abs=1e-5)


def test_bot_respond_passes_trace_through(tiny_bots):
    bot = tiny_bots["antilm"]
    r = bot.respond("hello there, how are you?", trace=True, max_len=8)
    assert r.trace and r.trace[0]["step"] == 0 and isinstance(r.trace[0]["text"], str)
    check_trace(r, bot.settings(max_len=8))
    assert bot.respond("hello there, how are you?", max_len=8).trace is None
    with pytest.raises(ValueError, match="unknown decoding setting"):
        bot.respond("hi", traces=True)
