"""Delayed beam search: the first ``delay_tokens`` tokens drawn as the sampler draws them, then beam search. Exact
equivalences on a tiny real model (delay 0 is beam search, a delay as long as the reply is sampling with the same
draws), the sampled start and the searched rest on a scripted table, seeded requests through the scheduler."""

import math

import pytest
import torch
from scripted import A, B, C, D, E, Scripted, decode, tiny_models

from core.decoding import DecodeConfig, describe_settings, fields_for, generate

torch.set_num_threads(1)
SRC = [[5, 9, 12, 7, 8], [20, 21], [40]]


def table(key, prefix):
    """The first token is a (0.5), b (0.3) or c (0.2); after a the best rest is "b </s>", after b "c </s>"."""
    return {
        (): {A: 0.5, B: 0.3, C: 0.2},
        (A,): {B: 0.8, E: 0.2},
        (B,): {C: 0.9, E: 0.1},
        (C,): {D: 0.6, E: 0.4},
    }.get(prefix, {E: 1.0})


def test_delay_0_is_beam_search_on_a_real_model():
    model, lm = tiny_models(seed=3)
    beam = generate(model, SRC, DecodeConfig(beam_size=4, nbest=4, max_len=9), lm=lm)
    delayed = generate(model, SRC, DecodeConfig(strategy="delayed_beam", delay_tokens=0, beam_size=4, nbest=4,
                                                max_len=9, seed=1), lm=lm)
    for b, d in zip(beam, delayed, strict=True):
        assert [h.tokens for h in d.nbest] == [h.tokens for h in b.nbest]
        assert [h.score for h in d.nbest] == pytest.approx([h.score for h in b.nbest], abs=1e-5)


@pytest.mark.parametrize("sampling", [dict(temperature=0.8), dict(top_k=5, top_p=0.9), dict(min_p=0.1)])
def test_a_delay_as_long_as_the_reply_draws_what_the_sampler_draws(sampling):
    model, _ = tiny_models(seed=5)
    common = dict(beam_size=4, nbest=4, max_len=7, seed=11, **sampling)
    sampled = generate(model, SRC, DecodeConfig(strategy="sample", **common))
    delayed = generate(model, SRC, DecodeConfig(strategy="delayed_beam", delay_tokens=7, **common))
    for s, d in zip(sampled, delayed, strict=True):
        assert [h.tokens for h in d.nbest] == [h.tokens for h in s.nbest]
        assert [h.score for h in d.nbest] == pytest.approx([h.score for h in s.nbest], abs=1e-5)


def test_the_first_token_is_sampled_and_the_rest_is_searched():
    firsts = set()
    for seed in range(40):
        cfg = DecodeConfig(strategy="delayed_beam", delay_tokens=1, beam_size=2, nbest=1, max_len=5, top_k=2,
                           seed=seed)
        [r] = decode(Scripted(table), cfg)
        assert r.tokens in ([A, B, E], [B, C, E])  # a top-2 first token, then the best rest: never "a </s>" or c ...
        expected = {A: [0.5, 0.8, 1.0], B: [0.3, 0.9, 1.0]}[r.tokens[0]]  # its log p counts the sampled token
        assert r.score == pytest.approx(sum(map(math.log, expected)), abs=1e-6)
        firsts.add(r.tokens[0])
    assert firsts == {A, B}  # both starts occur; beam search would always start with a (0.4 vs 0.27)
    [beam] = decode(Scripted(table), DecodeConfig(beam_size=2, nbest=1, max_len=5))
    assert beam.tokens == [A, B, E]


def test_seeded_delayed_beam_is_reproducible_and_varies_with_the_seed():
    model, _ = tiny_models(seed=6)
    cfg = DecodeConfig(strategy="delayed_beam", delay_tokens=2, beam_size=5, max_len=8, temperature=1.5)
    runs = [[r.tokens for r in generate(model, SRC, cfg.with_overrides(seed=s))] for s in (1, 1, 2, 3, 4)]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])


def test_the_ui_and_the_tag_show_its_settings():
    assert {"delay_tokens", "temperature", "top_k", "top_p", "beam_size"} <= set(fields_for("delayed_beam"))
    assert "delay_tokens" not in fields_for("beam")
    assert describe_settings(dict(strategy="delayed_beam", delay_tokens=3, top_k=10)) == \
        "delayed beam K=10, first 3 tokens sampled (T=1 top-k=10 top-p=1) · max 30"
    with pytest.raises(ValueError, match="delay_tokens"):
        DecodeConfig(strategy="delayed_beam", delay_tokens=-1)

