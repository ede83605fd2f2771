"""Anti-LM span counted in words (``gamma_words``): a scripted byte-level BPE tokenizer and scripted per-step
tables give exact hypotheses and scores; gamma in tokens is unchanged; the real tokenizer's word-start table."""

import math

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from core.decoding import AntiLM, DecodeConfig, Step, build_modifiers, describe_settings, generate, word_starts
from core.model import Memory
from core.tokenizer import EOS_ID, PAD_ID, SPECIALS, Tokenizer, train_tokenizer

torch.set_num_threads(1)
E, HI, NURS, ING, YOU = EOS_ID, 4, 5, 6, 7  # "Ġhi" "Ġnurs" "ing" "Ġyou": ING continues a word, the rest start one
V = 8


def scripted_tokenizer() -> Tokenizer:
    """A real byte-level BPE tokenizer over a fixed 8-token vocabulary (no merges needed to decode)."""
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {"\u0120hi": HI, "\u0120nurs": NURS, "ing": ING,
                                                        "\u0120you": YOU}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    hf.add_special_tokens(SPECIALS)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.decoder = decoders.ByteLevel()
    return Tokenizer(hf)


class Scripted:
    """Seq2Seq / LanguageModel stand-in: next-token distribution ``table(prefix) -> {token: prob}``; the state
    (1, N, 1 + M) carries [length, prefix...] so the engine's row reordering moves prefixes like hidden states."""

    M = 16

    def __init__(self, table):
        self.table, self.calls = table, 0

    def encode(self, src, src_lens):
        return Memory(src.unsqueeze(-1).float(), src != PAD_ID, torch.zeros(1, src.size(0), 1 + self.M,
                                                                             dtype=torch.long))

    def init_state(self, batch, device="cpu"):
        return torch.zeros(1, batch, 1 + self.M, dtype=torch.long)

    def decode_step(self, tok, state, memory=None):
        self.calls += 1
        state = state.clone()
        logp = torch.full((tok.size(0), V), -math.inf)
        for i, t in enumerate(tok.tolist()):
            n = int(state[0, i, 0])
            if t != 1:  # not <s>
                state[0, i, 1 + n], state[0, i, 0] = t, n + 1
                n += 1
            for w, p in self.table(tuple(state[0, i, 1 : 1 + n].tolist())).items():
                logp[i, w] = math.log(p)
        if memory is None:
            return logp, state
        return logp, state, memory.mask.float() / memory.mask.sum(1, keepdim=True)


MODEL = {HI: 0.5, NURS: 0.3, ING: 0.15, E: 0.05}  # steps 0 and 1
MODEL_2 = {HI: 0.45, NURS: 0.25, ING: 0.2, E: 0.1}  # step 2
LM = {HI: 0.8, NURS: 0.05, ING: 0.05, E: 0.1}  # the LM finds the fragment pieces rare


def model_table(prefix):
    return MODEL_2 if len(prefix) == 2 else MODEL


def lm_table(prefix):
    return LM


def run(gamma, gamma_words, **kw):
    cfg = DecodeConfig(beam_size=10, nbest=3, max_len=3, min_len=3, antilm=0.5, gamma=gamma, gamma_words=gamma_words,
                       **kw)
    lm = Scripted(lm_table)
    [r] = generate(Scripted(model_table), [[HI]], cfg, lm=lm, tokenizer=scripted_tokenizer())
    return r, lm


def expected_score(tokens, penalised):
    """Score of ``tokens`` when the pieces at positions ``penalised`` carry the anti-LM term."""
    return sum(math.log(model_table(tokens[:k])[t]) - (0.5 * math.log(LM[t]) if k in penalised else 0.0)
               for k, t in enumerate(tokens))


def test_word_start_table_of_the_scripted_tokenizer():
    starts = word_starts(scripted_tokenizer())
    assert starts.tolist() == [True, True, True, True, True, True, False, True]  # specials, </s>: a new unit


# ----------------------------------------------------------------------------- exact hypotheses and scores


def test_token_gamma_penalises_only_the_first_gamma_pieces():
    # steps 0-1, penalised: hi -0.582, nurs +0.294, ing -0.399; unpenalised: hi -0.693, nurs -1.204, ing -1.897
    # step 2, penalised: hi -0.687, nurs +0.112, ing -0.111; unpenalised: hi -0.799, nurs -1.386, ing -1.609
    r, lm = run(gamma=1, gamma_words=False)
    assert r.tokens == [NURS, HI, HI]
    assert r.score == pytest.approx(expected_score([NURS, HI, HI], {0}), abs=1e-5)
    assert lm.calls == 1


def test_word_gamma_penalises_every_piece_of_the_first_gamma_words():
    r, lm = run(gamma=1, gamma_words=True)
    # "Ġnurs" "ing" "ing" is one word: all three pieces are inside the span; any word start would end it
    assert r.tokens == [NURS, ING, ING]
    assert r.text == "nursinging"
    assert r.score == pytest.approx(expected_score([NURS, ING, ING], {0, 1, 2}), abs=1e-5)
    assert r.nbest[0].parts["antilm"] == pytest.approx(-0.5 * (math.log(LM[NURS]) + 2 * math.log(LM[ING])), abs=1e-5)
    # the runner-up leaves the word at the second piece: only its first piece is penalised
    assert r.nbest[1].tokens == [NURS, ING, HI]
    assert r.nbest[1].score == pytest.approx(expected_score([NURS, ING, HI], {0, 1}), abs=1e-5)
    assert lm.calls == 3  # a live row was still inside its first word at every step


def test_word_gamma_two_words():
    r, _ = run(gamma=2, gamma_words=True)
    # word 1 "Ġnurs", word 2 "Ġnurs ing": every piece penalised; with gamma 2 in tokens the third piece is not
    assert r.tokens == [NURS, NURS, ING] and r.text == "nurs nursing"
    assert r.score == pytest.approx(expected_score([NURS, NURS, ING], {0, 1, 2}), abs=1e-5)
    tokens, _ = run(gamma=2, gamma_words=False)
    assert tokens.tokens == [NURS, NURS, HI]
    assert tokens.score == pytest.approx(expected_score([NURS, NURS, HI], {0, 1}), abs=1e-5)


def test_the_lm_stops_once_every_live_row_is_past_gamma_words():
    def words_only(prefix):
        return {HI: 0.6, YOU: 0.4}  # every piece starts a word: words == tokens

    cfg = DecodeConfig(beam_size=3, nbest=1, max_len=6, min_len=6, antilm=0.5, gamma=2, gamma_words=True)
    lm = Scripted(lm_table)
    generate(Scripted(words_only), [[HI]], cfg, lm=lm, tokenizer=scripted_tokenizer())
    # steps 0 and 1 are in words 1 and 2; step 2 still needs the LM (its piece could continue word 2), then no
    assert lm.calls == 3


def test_when_every_piece_starts_a_word_words_equal_tokens():
    def words_only(prefix):
        return {HI: 0.5, YOU: 0.3, E: 0.2}

    def lm(prefix):
        return {HI: 0.7, YOU: 0.1, E: 0.2}

    for gamma in (1, 2, 3):
        out = []
        for gw in (False, True):
            cfg = DecodeConfig(beam_size=4, nbest=4, max_len=5, antilm=0.6, gamma=gamma, gamma_words=gw)
            [r] = generate(Scripted(words_only), [[HI]], cfg, lm=Scripted(lm), tokenizer=scripted_tokenizer())
            out.append([(h.tokens, round(h.score, 6), round(h.parts["antilm"], 6)) for h in r.nbest])
        assert out[0] == out[1]


# ----------------------------------------------------------------------------- the modifier on hand-made steps


def test_word_mask_on_a_hand_made_step():
    starts = word_starts(scripted_tokenizer())
    mod = AntiLM(0.5, gamma=2, starts=starts)
    prefix = torch.tensor([[NURS, ING, ING], [NURS, HI, ING], [HI, YOU, HI]])  # 1, 2 and 3 words begun
    lm = torch.log(torch.full((3, V), 1 / V))
    scores = torch.zeros(3, V)
    out = mod(scores, Step(3, prefix, lm))
    penalty = -0.5 * math.log(1 / V)
    assert torch.allclose(out[0], torch.full((V,), penalty))  # word 1 continues or word 2 starts: all penalised
    assert out[1].tolist() == pytest.approx([0.0 if starts[v] else penalty for v in range(V)])  # only "ing"
    assert out[2].tolist() == [0.0] * V  # three words begun: past the span
    assert mod.needs_prefix
    assert mod.words_begun(prefix).tolist() == [1, 2, 3]


def test_token_gamma_modifier_is_unchanged():
    mod = AntiLM(0.5, gamma=2)
    scores, lm = torch.zeros(2, V), torch.log(torch.full((2, V), 1 / V))
    assert torch.equal(mod(scores, Step(1, None, lm)), scores - 0.5 * lm)
    assert torch.equal(mod(scores, Step(2, None, None)), scores)
    assert not mod.needs_prefix


def test_gamma_words_needs_the_tokenizer_and_says_so():
    cfg = DecodeConfig(antilm=0.5, gamma=2, gamma_words=True)
    with pytest.raises(ValueError, match="gamma_words=True counts words: pass the tokenizer"):
        generate(Scripted(model_table), [[HI]], cfg, lm=Scripted(lm_table))
    with pytest.raises(ValueError, match="pass the tokenizer"):
        build_modifiers(cfg)
    with pytest.raises(ValueError, match="gamma_words=1: must be True or False"):
        DecodeConfig(gamma_words=1)
    # without anti-LM the setting changes nothing and needs nothing
    [r] = generate(Scripted(model_table), [[HI]], DecodeConfig(max_len=3, gamma_words=True))
    assert r.tokens


def test_describe_settings_names_the_unit():
    assert "anti-LM 0.4 (gamma 4 words)" in describe_settings({"antilm": 0.4, "gamma": 4, "gamma_words": True})
    assert "anti-LM 0.4 (gamma 4)" in describe_settings({"antilm": 0.4, "gamma": 4})


def test_real_bpe_tokenizer_marks_word_starts():
    tok = train_tokenizer(["what is basketball? i don't know.", "hello there, how are you doing?"] * 3,
                          vocab_size=300)
    starts = word_starts(tok)
    assert starts is word_starts(tok)  # built once per tokenizer
    ids = tok.encode("what is basketball? i don't know.")
    words = [bool(starts[i]) for i in ids]
    assert words[0] and sum(words) == 6  # what / is / basketball? / i / don't / know.
    word_tok = train_tokenizer(["a b c", "d e"], kind="word")
    assert bool(word_starts(word_tok).all())


def test_gamma_words_on_tiny_real_bots(tiny_bots):
    bot = tiny_bots["antilm"]
    base = bot.respond_batch(["hello there", "what is basketball?"], antilm=0.5, gamma=2, gamma_words=False)
    words = bot.respond_batch(["hello there", "what is basketball?"], antilm=0.5, gamma=2, gamma_words=True)
    assert all(r.settings["gamma_words"] for r in words) and not any(r.settings["gamma_words"] for r in base)
    starts = word_starts(bot.tokenizer)
    for r in words:  # the anti-LM part is the LM's log-probs of the pieces of the first two words, teacher-forced
        tokens = r.nbest[0].tokens
        with torch.no_grad():
            lm_logp = torch.log_softmax(bot.lm(torch.tensor([[1] + tokens[:-1]])), -1)[0]  # (T, V)
        penalised = []
        for i, t in enumerate(tokens):
            before = sum(k == 0 or bool(starts[u]) for k, u in enumerate(tokens[:i]))  # words begun before piece i
            if before < 2 or (before == 2 and not starts[t]):
                penalised.append(i)
        expected = sum(-0.5 * float(lm_logp[i, tokens[i]]) for i in penalised)
        assert r.nbest[0].parts["antilm"] == pytest.approx(expected, abs=1e-3)
        assert r.score == pytest.approx(sum(r.nbest[0].parts.values()), abs=1e-4)


def test_the_anti_lm_floor_never_promotes_a_token_the_model_finds_implausible():
    """antilm_min_p: the penalty (here a bonus for LM-rare tokens) applies only to tokens with p >= min_p * p_max."""
    from core.decoding import AntiLM, Step

    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, -4.0]]), -1)  # token 2: the model finds it implausible
    lm = torch.tensor([[-0.1, -2.0, -14.0]])  # ... and the LM finds it rarer still
    step = Step(0, None, lm, logp)
    free = AntiLM(0.5, 4)(logp.clone(), step)
    floored = AntiLM(0.5, 4, min_p=0.05)(logp.clone(), step)
    assert int(free.argmax()) == 2  # without the floor the rare token wins: logp + 7 nats of anti-LM bonus
    assert torch.allclose(floored[0, :2], free[0, :2]) and floored[0, 2] == logp[0, 2]  # no bonus below the floor
    assert int(floored.argmax()) == 0
    assert torch.equal(AntiLM(0.5, 4, min_p=0.0)(logp.clone(), step), free)  # 0: the penalty applies everywhere
