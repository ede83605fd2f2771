"""The strategy registry and the decoders added to it (diverse beam, contrastive, typical-p, min-p, repetition and
length penalties): exact hypotheses on scripted per-step tables, invariants on tiny random models, the settings
metadata the UI is generated from."""

import math

import pytest
import torch
from scripted import A, B, C, D, E, Scripted, decode, flat_table, tiny_models

from core.decoding import (
    STRATEGIES,
    DecodeConfig,
    RepetitionPenalty,
    Step,
    Strategy,
    build_modifiers,
    describe_settings,
    fields_for,
    generate,
    min_p_filter,
    typical_filter,
    ui_controls,
)
from core.tokenizer import BOS_ID

torch.set_num_threads(1)
log = math.log


# ----------------------------------------------------------------------------- the registry


def test_every_strategy_is_registered_and_described():
    assert {"greedy", "beam", "sample", "diverse_beam", "contrastive", "delayed_beam"} <= set(STRATEGIES)
    for name, cls in STRATEGIES.items():
        assert issubclass(cls, Strategy) and cls.name == name
        cfg = DecodeConfig(strategy=name, top_k=4 if name == "contrastive" else 0)
        assert isinstance(cls.describe(cfg), str) and cls.describe(cfg)
        assert set(cls.reads) <= set(fields_for(name))


def test_describe_settings_matches_the_app_tags():
    base = dict(strategy="beam", beam_size=10, temperature=1.0, top_k=0, top_p=1.0, antilm=0.5, gamma=5,
                n_bonus=0.0, mmi_lambda=0.0, no_repeat_ngram=0, max_len=30)
    assert describe_settings(base) == "beam K=10 · anti-LM 0.5 (gamma 5) · max 30"
    assert describe_settings({**base, "strategy": "greedy", "antilm": 0}) == "greedy · max 30"
    tag = describe_settings({**base, "strategy": "sample", "antilm": 0, "n_bonus": 0.2, "mmi_lambda": 0.3})
    assert tag == "sample x10 T=1 top-k=0 top-p=1 · bonus 0.2 · MMI 0.3 · max 30"
    assert describe_settings(dict(strategy="diverse_beam", beam_size=4, num_groups=2, diversity_penalty=0.5,
                                  repetition_penalty=1.2, length_penalty=0.6)) == \
        "diverse beam K=4 in 2 groups, diversity 0.5 · repetition 1.2 · length penalty 0.6 · max 30"
    assert describe_settings(DecodeConfig(strategy="contrastive", top_k=4, penalty_alpha=0.6)) == \
        "contrastive top-k=4 alpha=0.6 · max 30"
    assert describe_settings(dict(strategy="sample", min_p=0.1, typical_p=0.9)).startswith(
        "sample x10 T=1 top-k=0 top-p=1 min-p=0.1 typical-p=0.9")
    with pytest.raises(ValueError, match="unknown decoding setting"):
        describe_settings({"beams": 3})


def test_fields_for_lists_only_what_a_strategy_reads():
    assert "temperature" not in fields_for("beam") and "beam_size" in fields_for("beam")
    assert {"num_groups", "diversity_penalty"} <= set(fields_for("diverse_beam"))
    assert {"penalty_alpha", "top_k"} <= set(fields_for("contrastive")) and "beam_size" not in fields_for("greedy")
    assert {"typical_p", "min_p", "seed"} <= set(fields_for("sample"))
    with pytest.raises(ValueError, match="unknown strategy 'nucleus'"):
        fields_for("nucleus")


def test_ui_controls_come_from_decode_config():
    controls = ui_controls()
    names = [c.name for c in controls]
    assert names[:3] == ["beam_size", "antilm", "n_bonus"]  # main
    today = ["beam_size", "antilm", "n_bonus", "gamma", "max_len", "mmi_lambda", "no_repeat_ngram", "sample",
             "temperature", "top_k", "top_p"]
    assert set(today) <= set(names)
    assert {"num_groups", "diversity_penalty", "penalty_alpha", "typical_p", "min_p", "repetition_penalty",
            "length_penalty"} <= set(names)
    assert [c.group for c in controls] == sorted((c.group for c in controls),
                                                 key=["main", "search", "sampling"].index)
    by = {c.name: c for c in controls}
    assert (by["beam_size"].lo, by["beam_size"].hi, by["beam_size"].kind) == (1, 20, "int")  # core 1..50
    assert (by["temperature"].lo, by["temperature"].hi) == (0.05, 2.0)  # core (0, 5]
    assert by["sample"].kind == "bool" and by["sample"].group == "sampling"
    assert by["antilm"].help == DecodeConfig.__dataclass_fields__["antilm"].metadata["help"]
    for c in controls:
        if c.kind in ("int", "float") and c.name != "sample":
            DecodeConfig().with_overrides(**{c.name: c.lo})  # the slider's ends are valid settings
            if c.name != "num_groups":
                DecodeConfig().with_overrides(**{c.name: c.hi})
    every = {c.name: c for c in ui_controls(every_field=True)}
    assert every["strategy"].kind == "choice" and every["strategy"].choices == tuple(STRATEGIES)


@pytest.mark.parametrize("kw, message", [
    (dict(strategy="diverse_beam", beam_size=10, num_groups=3), "multiple of num_groups"),
    (dict(strategy="contrastive"), "set top_k >= 1"),
    (dict(length_norm=True, length_penalty=0.5), "both rank by length"),
    (dict(num_groups=11), r"num_groups=11 is out of range: allowed \[1, beam_size \(= 10\)\]"),
    (dict(repetition_penalty=0.0), r"repetition_penalty=0.0 is out of range"),
    (dict(typical_p=0.0), r"typical_p=0.0 is out of range"),
    (dict(min_p=1.5), r"min_p=1.5 is out of range"),
    (dict(diversity_penalty=-1.0), r"diversity_penalty=-1.0 is out of range"),
    (dict(strategy="nucleus"), r"strategy='nucleus': choose one of \('greedy', 'beam', 'sample', "),
])
def test_new_settings_reject_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kw)


def test_defaults_of_the_new_settings_are_off():
    cfg = DecodeConfig()
    assert (cfg.num_groups, cfg.diversity_penalty, cfg.penalty_alpha, cfg.typical_p, cfg.min_p,
            cfg.repetition_penalty, cfg.length_penalty) == (1, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)


# ----------------------------------------------------------------------------- diverse beam search


def two_ways(key, prefix):
    """a (0.55) then c (0.9); b (0.45) then c (0.6) or d (0.4); every reply ends after two words."""
    return {(): {A: 0.55, B: 0.45}, (A,): {C: 0.9, E: 0.1}, (B,): {C: 0.6, D: 0.4}}.get(prefix, {E: 1.0})


def test_plain_beam_keeps_both_replies_ending_in_c():
    [r] = decode(Scripted(two_ways), DecodeConfig(beam_size=2, nbest=2, max_len=3))
    assert [h.tokens for h in r.nbest] == [[A, C, E], [B, C, E]]


def test_diverse_beam_makes_the_second_group_avoid_the_first_groups_token():
    cfg = DecodeConfig(strategy="diverse_beam", beam_size=2, nbest=2, num_groups=2, diversity_penalty=1.0, max_len=3)
    [r] = decode(Scripted(two_ways), cfg)
    assert [h.tokens for h in r.nbest] == [[A, C, E], [B, D, E]]  # c is worth 1.0 less to group 2: log .6 - 1 < log .4
    assert [h.score for h in r.nbest] == pytest.approx([log(0.55 * 0.9), log(0.45 * 0.4)], abs=1e-6)
    assert [h.parts["diversity"] for h in r.nbest] == pytest.approx([0.0, 0.0])


def test_a_small_diversity_penalty_is_paid_in_the_score():
    cfg = DecodeConfig(strategy="diverse_beam", beam_size=2, nbest=2, num_groups=2, diversity_penalty=0.25,
                       max_len=3)
    [r] = decode(Scripted(two_ways), cfg)
    assert [h.tokens for h in r.nbest] == [[A, C, E], [B, C, E]]  # log .55 - .25 < log .45; log .6 - .25 > log .4
    assert r.nbest[1].score == pytest.approx(log(0.45 * 0.6) - 0.25, abs=1e-6)
    assert r.nbest[1].parts["diversity"] == pytest.approx(-0.25)
    assert sum(r.nbest[1].parts.values()) == pytest.approx(r.nbest[1].score, abs=1e-5)


@pytest.mark.parametrize("penalty", [0.0, 2.0])
def test_one_group_is_plain_beam_search(penalty):
    model, lm = tiny_models(seed=8)
    src = [[5, 9, 12, 7], [20, 21], [30]]
    for extra in (dict(), dict(antilm=0.4, gamma=3, n_bonus=0.2)):
        beam = generate(model, src, DecodeConfig(beam_size=6, max_len=10, **extra), lm=lm)
        div = generate(model, src, DecodeConfig(strategy="diverse_beam", beam_size=6, max_len=10, num_groups=1,
                                                diversity_penalty=penalty, **extra), lm=lm)
        for p, d in zip(beam, div):
            assert [(h.tokens, h.score) for h in p.nbest] == [(h.tokens, h.score) for h in d.nbest]


def test_diverse_beam_groups_start_with_different_tokens_on_a_real_model():
    model, _ = tiny_models(seed=9)
    cfg = DecodeConfig(strategy="diverse_beam", beam_size=4, nbest=4, num_groups=4, diversity_penalty=5.0, max_len=6,
                       min_len=6)
    [r] = generate(model, [[5, 9, 12]], cfg)
    assert len(r.nbest) == 4
    assert len({h.tokens[0] for h in r.nbest}) == 4  # one group per first token
    for h in r.nbest:
        assert sum(h.parts.values()) == pytest.approx(h.score, abs=1e-4)


# ----------------------------------------------------------------------------- contrastive search


class WithHidden(Scripted):
    """A scripted model whose output state after a token is that token's one-hot vector, so the cosine of two
    states is 1 for the same token and 0 otherwise: contrastive search's penalty is "this token was used"."""

    def decode_step(self, tok, state, memory=None, *, return_hidden=False):
        out = super().decode_step(tok, state, memory)
        if not return_hidden:
            return out
        return (*out, torch.nn.functional.one_hot(tok, self.V).float())  # (N, V) as the hidden state


def repeats_a(key, prefix):
    """a (0.6) then a again (0.5) is greedy; b (0.3) avoids the repeat."""
    return {(): {A: 0.6, B: 0.4}, (A,): {A: 0.5, B: 0.3, E: 0.2}}.get(prefix, {E: 1.0})


def test_contrastive_search_avoids_the_state_it_has_seen():
    cfg = DecodeConfig(strategy="contrastive", top_k=2, penalty_alpha=0.5, max_len=4)
    [r] = decode(WithHidden(repeats_a), cfg)
    # step 2: a scores 0.5 * 0.5 - 0.5 * 1 = -0.25, b scores 0.5 * 0.3 - 0 = 0.15
    assert r.tokens == [A, B, E]
    assert r.score == pytest.approx(log(0.6 * 0.3), abs=1e-6)
    assert r.nbest[0].parts["logp"] == pytest.approx(r.score, abs=1e-6)


def test_contrastive_with_top_k_1_or_alpha_0_is_greedy():
    greedy = decode(WithHidden(repeats_a), DecodeConfig(strategy="greedy", max_len=4))[0]
    assert greedy.tokens == [A, A, E]
    for cfg in (DecodeConfig(strategy="contrastive", top_k=1, penalty_alpha=0.9, max_len=4),
                DecodeConfig(strategy="contrastive", top_k=5, penalty_alpha=0.0, max_len=4)):
        [r] = decode(WithHidden(repeats_a), cfg)
        assert (r.tokens, r.score) == (greedy.tokens, greedy.score)


@pytest.mark.parametrize("seed", [0, 1])
def test_penalty_alpha_0_is_greedy_on_a_real_model(seed):
    model, lm = tiny_models(seed=seed)
    src = [[5, 9, 12, 7], [20, 21], [30, 31, 32]]
    for extra in (dict(), dict(antilm=0.5, gamma=2, no_repeat_ngram=2)):
        greedy = generate(model, src, DecodeConfig(strategy="greedy", max_len=12, **extra), lm=lm)
        contrastive = generate(model, src, DecodeConfig(strategy="contrastive", top_k=6, penalty_alpha=0.0,
                                                        max_len=12, **extra), lm=lm)
        assert [(r.tokens, r.score) for r in greedy] == [(r.tokens, r.score) for r in contrastive]


def test_contrastive_on_a_real_model_reads_its_hidden_states():
    model, _ = tiny_models(seed=2)
    src = [[5, 9, 12, 7], [20, 21]]
    cfg = DecodeConfig(strategy="contrastive", top_k=4, penalty_alpha=0.6, max_len=10, min_len=10)
    together = generate(model, src, cfg)
    for s, r in zip(src, together, strict=True):
        [alone] = generate(model, [s], cfg)
        assert r.tokens == alone.tokens and len(r.tokens) == 10
        assert r.score == pytest.approx(sum(r.logprobs), abs=1e-4)
    greedy = generate(model, src, DecodeConfig(strategy="greedy", max_len=10, min_len=10))
    assert [r.tokens for r in greedy] != [r.tokens for r in together]  # the penalty changed a choice


def test_the_step_contract_returns_the_hidden_state_it_projects():
    model, _ = tiny_models(seed=3)
    mem = model.encode(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    tok = torch.tensor([BOS_ID])
    for grad in (False, True):  # the inference path and the training path
        with torch.set_grad_enabled(grad):
            plain = model.decode_step(tok, mem.state, mem)
            logp, state, attn, hidden = model.decode_step(tok, mem.state, mem, return_hidden=True)
        assert len(plain) == 3 and hidden.shape == (1, 16)
        assert torch.allclose(logp, plain[0], atol=1e-6) and torch.allclose(attn, plain[2])
        assert torch.allclose(torch.log_softmax(model.decoder.out(hidden), -1), logp, atol=1e-5)


def test_contrastive_needs_a_model_that_returns_hidden_states():
    cfg = DecodeConfig(strategy="contrastive", top_k=2, penalty_alpha=0.5)
    with pytest.raises(ValueError, match="return_hidden"):
        decode(Scripted(repeats_a), cfg)


# ----------------------------------------------------------------------------- typical-p and min-p


def flat_logits():
    p = torch.zeros(1, 8)
    for w, q in flat_table(0, ()).items():
        p[0, w] = q
    return p.log()  # (1, V): E .05, a .4, b .3, c .15, d .1


def test_min_p_keeps_tokens_above_a_share_of_the_best():
    kept = torch.isfinite(min_p_filter(flat_logits(), 0.3)[0]).nonzero().flatten().tolist()
    assert kept == [A, B, C]  # p >= 0.3 * 0.4 = 0.12
    assert torch.equal(min_p_filter(flat_logits(), 0.0), flat_logits())


def test_typical_p_keeps_the_tokens_closest_to_the_entropy():
    # entropy 1.392 nats; |surprise - entropy|: b .19, a .48, c .50, d .91, </s> 1.60
    kept = torch.isfinite(typical_filter(flat_logits(), 0.6)[0]).nonzero().flatten().tolist()
    assert kept == [A, B]  # b (.3) then a (.3 < .6 before it), c starts at .7
    kept = torch.isfinite(typical_filter(flat_logits(), 0.75)[0]).nonzero().flatten().tolist()
    assert kept == [A, B, C]
    assert torch.equal(typical_filter(flat_logits(), 1.0), flat_logits())


@pytest.mark.parametrize("overrides, allowed", [
    (dict(min_p=0.3), {A, B, C}),
    (dict(typical_p=0.6), {A, B}),
    (dict(min_p=0.5, typical_p=0.75), {A, B}),  # min-p first (a, b), then typical-p keeps both
])
def test_min_p_and_typical_p_never_leave_the_allowed_set(overrides, allowed):
    cfg = DecodeConfig(strategy="sample", beam_size=20, nbest=20, max_len=6, seed=7, **overrides)
    [r] = decode(Scripted(flat_table), cfg)
    used = {t for h in r.nbest for t in h.tokens}
    assert used <= allowed | {E} and allowed <= used
    assert E not in used or E in allowed


def test_min_p_0_and_typical_p_1_change_nothing():
    model, _ = tiny_models(seed=5)
    src = [[5, 9, 12], [20, 21]]
    base = DecodeConfig(strategy="sample", beam_size=4, nbest=4, temperature=1.3, top_k=20, top_p=0.9, seed=11)
    same = base.with_overrides(min_p=0.0, typical_p=1.0)
    runs = [[[(h.tokens, h.score) for h in r.nbest] for r in generate(model, src, c)] for c in (base, same)]
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- repetition penalty


def test_repetition_penalty_modifier_scales_used_tokens_only():
    scores = torch.log(torch.tensor([[0.05, 0.05, 0.1, 0.05, 0.4, 0.2, 0.1, 0.05]] * 2))
    out = RepetitionPenalty(2.0)(scores, Step(2, torch.tensor([[A, A], [B, C]]), None))
    assert out[0, A] == pytest.approx(2 * scores[0, A].item()) and out[1, B] == pytest.approx(2 * scores[1, B].item())
    untouched = [i for i in range(8) if i != A]
    assert torch.equal(out[0, untouched], scores[0, untouched])
    positive = torch.tensor([[0.5, -0.5]])
    assert RepetitionPenalty(2.0)(positive, Step(1, torch.tensor([[0]]), None)).tolist() == [[0.25, -0.5]]


@pytest.mark.parametrize("theta, expected, repetition", [
    (1.0, [A, A, E], 0.0),
    (1.2, [A, A, E], 0.2 * log(0.5)),  # 1.2 log .5 = -0.83 still beats log .3 = -1.20
    (2.0, [A, B, E], 0.0),  # 2 log .5 = -1.39 loses to log .3
])
def test_repetition_penalty_in_greedy_search(theta, expected, repetition):
    [r] = decode(Scripted(repeats_a), DecodeConfig(strategy="greedy", max_len=4, repetition_penalty=theta))
    assert r.tokens == expected
    assert r.nbest[0].parts["repetition"] == pytest.approx(repetition, abs=1e-6)
    assert r.score == pytest.approx(sum(r.logprobs) + repetition, abs=1e-6)


# ----------------------------------------------------------------------------- length penalty


def short_or_long(key, prefix):
    """a, then </s> (0.52) or a again (0.48) and </s>: a </s> has log p -0.654, a a </s> -0.734."""
    return {(): {A: 1.0}, (A,): {E: 0.52, A: 0.48}}.get(prefix, {E: 1.0})


def test_gnmt_length_penalty_can_prefer_the_longer_reply():
    plain = decode(Scripted(short_or_long), DecodeConfig(beam_size=2, nbest=2, max_len=3))[0]
    assert [h.tokens for h in plain.nbest] == [[A, E], [A, A, E]]
    [r] = decode(Scripted(short_or_long), DecodeConfig(beam_size=2, nbest=2, max_len=3, length_penalty=1.0))
    assert [h.tokens for h in r.nbest] == [[A, A, E], [A, E]]
    assert r.nbest[0].score == pytest.approx(log(0.48) / (8 / 6), abs=1e-6)  # ((5 + 3) / 6) ** 1
    assert r.nbest[1].score == pytest.approx(log(0.52) / (7 / 6), abs=1e-6)
    for h in r.nbest:
        assert h.parts["bonus"] == pytest.approx(h.score - sum(h.logprobs), abs=1e-6)
        assert sum(h.parts.values()) == pytest.approx(h.score, abs=1e-6)


def test_repetition_penalty_1_and_length_penalty_0_change_nothing():
    model, lm = tiny_models(seed=6)
    src = [[5, 9, 12, 7], [20, 21]]
    for strategy in ("greedy", "beam", "diverse_beam"):
        cfg = DecodeConfig(strategy=strategy, beam_size=4, nbest=4, num_groups=2, diversity_penalty=0.5, max_len=10,
                           antilm=0.3, gamma=2, n_bonus=0.1)
        same = cfg.with_overrides(repetition_penalty=1.0, length_penalty=0.0)
        assert [[(h.tokens, h.score) for h in r.nbest] for r in generate(model, src, cfg, lm=lm)] == \
            [[(h.tokens, h.score) for h in r.nbest] for r in generate(model, src, same, lm=lm)]
    assert [type(m).__name__ for m in build_modifiers(DecodeConfig())] == ["BanTokens", "MinLength"]


def test_every_strategy_decodes_a_batch_like_one_prompt_at_a_time():
    model, lm = tiny_models(seed=4)
    src = [[5, 9, 12, 7, 8], [20, 21], [40]]
    for cfg in (DecodeConfig(strategy="diverse_beam", beam_size=4, nbest=4, num_groups=2, diversity_penalty=0.7,
                             max_len=9),
                DecodeConfig(beam_size=4, nbest=4, repetition_penalty=1.5, length_penalty=0.7, max_len=9),
                DecodeConfig(strategy="contrastive", top_k=3, penalty_alpha=0.4, max_len=9)):
        together = generate(model, src, cfg, lm=lm)
        for s, r in zip(src, together, strict=True):
            [alone] = generate(model, [s], cfg, lm=lm)
            assert [h.tokens for h in r.nbest] == [h.tokens for h in alone.nbest]
            assert [h.score for h in r.nbest] == pytest.approx([h.score for h in alone.nbest], abs=1e-4)

