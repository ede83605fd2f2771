"""The conversation window (core.context): what a bot reads, how training examples are built from conversations,
histories through Bot.respond / respond_batch, and context n-gram blocking, on the tiny real bots."""

from __future__ import annotations

import dataclasses

import pytest

from core.batching import encode_pairs
from core.context import (
    OWN_SEP_ID,
    SEP_ID,
    check_history,
    conversation_examples,
    history_turns,
    window_ids,
    window_of,
)
from core.corpora import load_corpus, make_pairs, normalize_text
from core.errors import SettingError
from core.evaluation.metrics import ngrams
from core.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def convs():
    return load_corpus("chitchat")[:40]


@pytest.fixture(scope="module")
def tok(convs):
    return train_tokenizer([u for c in convs for u in c], vocab_size=400)


def test_window_keeps_the_last_turns_joined_by_separators_and_cuts_the_oldest_tokens():
    turns = [[5, 6], [7], [8, 9]]
    assert window_ids(turns, context_turns=0, max_src_len=40) == [8, 9]
    assert window_ids(turns, context_turns=1, max_src_len=40) == [7, SEP_ID, 8, 9]
    assert window_ids(turns, context_turns=2, max_src_len=40) == [5, 6, SEP_ID, 7, SEP_ID, 8, 9]
    assert window_ids(turns, context_turns=2, max_src_len=5) == [SEP_ID, 7, SEP_ID, 8, 9]
    # speaker markers: the turn just before the message is the replier's own
    assert window_ids(turns, context_turns=2, max_src_len=40, speaker_markers=True) == [5, 6, SEP_ID, 7,
                                                                                       OWN_SEP_ID, 8, 9]


def test_without_a_window_the_examples_are_the_single_turn_pairs(convs, tok):
    single = conversation_examples(tok, convs, context_turns=0, max_src_len=40, max_tgt_len=40)
    assert single == encode_pairs(tok, make_pairs(convs), max_src_len=40, max_tgt_len=40)
    backward = conversation_examples(tok, convs, context_turns=2, max_src_len=40, max_tgt_len=40, swap=True)
    assert backward == encode_pairs(tok, make_pairs(convs, swap=True), max_src_len=40, max_tgt_len=40)


def test_window_examples_hold_the_earlier_turns_and_a_shuffle_swaps_only_them(convs, tok):
    real = conversation_examples(tok, convs, context_turns=2, max_src_len=900, max_tgt_len=900)
    single = conversation_examples(tok, convs, context_turns=0, max_src_len=900, max_tgt_len=900)
    assert len(real) == len(single) and [t for _, t in real] == [t for _, t in single]  # same replies
    conv = convs[0]
    ids = [tok.encode(u) for u in conv[:4]]
    assert real[2][0] == [*ids[0], SEP_ID, *ids[1], SEP_ID, *ids[2]]  # the 3rd reply: two earlier turns
    assert real[0][0] == ids[0]  # the first reply of a conversation has no earlier turn
    shuffled = conversation_examples(tok, convs, context_turns=2, max_src_len=900, max_tgt_len=900, shuffle_seed=0)
    assert [t for _, t in shuffled] == [t for _, t in real]
    last = lambda src: src[len(src) - src[::-1].index(SEP_ID):] if SEP_ID in src else src  # noqa: E731
    assert [last(s) for s, _ in shuffled] == [last(s) for s, _ in real]  # the same messages
    assert sum(s != r for (s, _), (r, _) in zip(shuffled, real)) > 0.9 * len(real)  # other contexts


def test_histories_are_checked_field_by_field():
    assert check_history(None) == [] and history_turns(["a", "b", "c"], limit=2) == ["b", "c"]
    assert history_turns(["a"], limit=0) == []
    for bad, field in (("text", "history must be a list"), ([1], "history[0] must be a string"),
                       (["a"] * 65, "history has 65 turns"), (["x" * 4001], "history[0] has 4001 characters")):
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            check_history(bad)


@pytest.mark.parametrize("bad, field", [
    ("text", "history"), ({"0": "hello"}, "history"), (["a", "b", "c", 4], "history[3]"), ([None], "history[0]"),
    (["a"] * 65, "history"), (["ok", "x" * 4001], "history[1]"),
])
def test_a_bad_history_raises_a_setting_error_naming_the_turn(bad, field):
    with pytest.raises(SettingError) as e:
        check_history(bad)
    assert (e.value.field, e.value.range) == (field, None) and isinstance(e.value, ValueError)


def test_a_bots_input_errors_name_their_field(tiny_bots):
    bot = tiny_bots["beam"]
    for prompt, history, field in (("  \x00 ", None, "prompt"), (3, None, "prompt"), ("hi", ["a", 4], "history[1]"),
                                   ("hi", "a", "history")):
        with pytest.raises(SettingError) as e:
            bot.respond(prompt, history=history)
        assert e.value.field == field
    with pytest.raises(SettingError) as e:
        tiny_bots["greedy"].respond("hi", antilm=0.5)  # no language model
    assert e.value.field == "antilm"


def test_a_bot_reads_its_window_and_an_old_checkpoint_the_message_only(tiny_bots):
    bot = tiny_bots["greedy"]
    assert bot.context_turns == 2 and window_of({"meta": {"train": {}}})["context_turns"] == 0
    history = ["do you like football?", "yes a lot", "who is your team?"]
    ids = bot.encode_prompt("why that one?", history)
    turns = [bot.tokenizer.encode(t) for t in [*history[-2:], "why that one?"]]
    assert ids == window_ids(turns, context_turns=2, max_src_len=bot.max_src_len)
    assert bot.respond("why that one?", history=history).source_tokens.count("</s>") >= 1
    old = dataclasses.replace(bot, context_turns=0)  # what a checkpoint from before windows loads as
    assert old.encode_prompt("why that one?", history) == bot.tokenizer.encode("why that one?")
    with pytest.raises(ValueError, match=r"history\[1\] must be a string"):
        bot.respond("hi", history=["ok", 3])


def test_respond_batch_gives_each_prompt_its_own_history(tiny_bots):
    bot = tiny_bots["beam"]
    prompts = ["why not?", "why not?", "what else?"]
    histories = [["let's go hiking", "i can't"], None, ["i like tea", "me too", "green or black?"]]
    together = bot.respond_batch(prompts, histories=histories, beam_size=3, max_len=8)
    alone = [bot.respond(p, history=h, beam_size=3, max_len=8) for p, h in zip(prompts, histories)]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.source_tokens for r in together] == [r.source_tokens for r in alone]
    with pytest.raises(ValueError, match="histories: 1 for 3 prompts"):
        bot.respond_batch(prompts, histories=[None])


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_context_blocking_never_repeats_an_ngram_of_the_bots_own_turns(tiny_bots, strategy):
    bot = tiny_bots["beam"]
    settings = {"strategy": strategy, "beam_size": 4, "max_len": 12, "min_len": 4}
    said = bot.respond("tell me about your day", **settings)  # what the bot says to it: its own earlier turn
    assert len(said.tokens) >= 3
    history = ["tell me about your day", said.text, "and then?"]
    own = bot.own_turns([*history, said.text])  # the bot's turns seen from the next message
    said_ids = bot.tokenizer.encode(normalize_text(said.text))
    assert own == [said_ids, said_ids]
    prompts, histories = ["tell me about your day", "what else?"], [[*history, said.text], None]
    blocked = bot.respond_batch(prompts, histories=histories, no_repeat_context_ngram=2, **settings)
    own_grams = set(ngrams([str(t) for t in said_ids], 2))
    assert not own_grams & set(ngrams([str(t) for t in blocked[0].tokens if t != SEP_ID], 2))
    # the prompt of the same batch without a history is decoded as without the setting
    assert blocked[1].text == bot.respond("what else?", **settings).text
