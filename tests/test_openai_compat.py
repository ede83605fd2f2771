"""The OpenAI-compatible routes, driven by the official ``openai`` client against a launched server.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_openai_compat.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from helpers import api_app, error_of, serve
from openai import OpenAI

HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def url(tiny_ctx) -> Iterator[str]:
    with serve(api_app(tiny_ctx, rate_limit=None)) as u:
        yield u


@pytest.fixture(scope="module")
def client(url) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_bots(client, tiny_bots):
    assert [m.id for m in client.models.list()] == list(tiny_bots)
    assert client.models.retrieve("antilm").id == "antilm"
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.models.retrieve("nope")


def test_completion_is_the_bots_reply(client, tiny_bots):
    out = client.chat.completions.create(model="antilm", messages=HI, max_tokens=6)
    expected = tiny_bots["antilm"].respond("hi there", max_len=6)
    assert out.object == "chat.completion" and out.model == "antilm" and out.id.startswith("chatcmpl-")
    [choice] = out.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == ("stop" if expected.tokens[-1] == 2 else "length")
    assert out.usage.completion_tokens == len(expected.tokens)
    assert out.usage.prompt_tokens == len(expected.source_tokens)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def chat(history: list[str], message: str) -> list[dict[str, str]]:
    """OpenAI messages of a conversation: ``history`` alternating user / assistant, then the user's ``message``."""
    roles = ["user", "assistant"] if len(history) % 2 == 0 else ["assistant", "user"]
    return [*({"role": roles[i % 2], "content": t} for i, t in enumerate(history)),
            {"role": "user", "content": message}]


CONVERSATIONS = [(["where are you from?", "paris"], "do you have any pets?"),
                 (["i love dogs", "me too"], "what about cats?"),
                 (["how was work today?", "long and boring"], "want to get dinner?")]


def test_messages_are_the_conversation(client, tiny_bots):
    bot = tiny_bots["greedy"]
    assert bot.context_turns == 2  # tests/conftest.py: the tiny bots read two earlier turns
    differs = 0
    for history, message in CONVERSATIONS:
        out = client.chat.completions.create(model="greedy", messages=chat(history, message))
        expected = bot.respond(message, history=history)
        assert out.choices[0].message.content == expected.text
        assert out.usage.prompt_tokens == len(expected.source_tokens)  # the window: history, </s>, message
        differs += expected.text != bot.respond(message).text
    assert differs >= 1  # the earlier turns reached the bot: the same last message, another reply


def test_system_messages_are_ignored_and_no_turn(client, tiny_bots):
    history, message = CONVERSATIONS[0]
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": history[0]},
                {"role": "developer", "content": "short answers"}, {"role": "assistant", "content": history[1]},
                {"role": "system", "content": "really nice"},
                {"role": "user", "content": [{"type": "text", "text": message}]},
                {"role": "system", "content": "last words"}]
    out = client.chat.completions.create(model="greedy", messages=messages)
    expected = tiny_bots["greedy"].respond(message, history=history)
    assert out.choices[0].message.content == expected.text
    assert out.usage.prompt_tokens == len(expected.source_tokens)


def test_a_single_message_is_answered_alone(client, tiny_bots):
    for messages in (HI, [{"role": "system", "content": "be nice"}, *HI]):
        out = client.chat.completions.create(model="greedy", messages=messages, max_tokens=8)
        expected = tiny_bots["greedy"].respond("hi there", max_len=8)
        assert out.choices[0].message.content == expected.text
        assert out.usage.prompt_tokens == len(expected.source_tokens)


def test_a_long_conversation_keeps_its_last_turns(client, tiny_bots):
    history = [f"turn number {i}" for i in range(99)]
    out = client.chat.completions.create(model="beam", messages=chat(history, "and now?"), max_tokens=6)
    expected = tiny_bots["beam"].respond("and now?", history=history[-64:], max_len=6)
    assert out.choices[0].message.content == expected.text


def test_stream_of_a_conversation_is_its_reply(client, tiny_bots):
    history, message = CONVERSATIONS[1]
    stream = client.chat.completions.create(model="rl", messages=chat(history, message), max_tokens=8, stream=True)
    text = "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
    assert text == tiny_bots["rl"].respond(message, history=history, max_len=8).text


def test_decoder_settings_as_extra_body_fields(client, tiny_bots):
    extra = {"beam_size": 3, "n_bonus": 0.5, "antilm": 0.2, "gamma": 2, "no_repeat_ngram": 2}
    out = client.chat.completions.create(model="antilm", messages=HI, max_tokens=8, extra_body=extra)
    expected = tiny_bots["antilm"].respond("hi there", max_len=8, **extra)
    assert out.choices[0].message.content == expected.text


def test_n_choices_come_from_the_nbest_list(client, tiny_bots):
    out = client.chat.completions.create(model="beam", messages=HI, n=3, max_tokens=6, logprobs=True)
    expected = tiny_bots["beam"].respond("hi there", max_len=6, nbest=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.message.content for c in out.choices] == [h.text for h in expected.nbest]
    lps = [t.logprob for t in out.choices[0].logprobs.content]
    assert lps == pytest.approx(expected.nbest[0].logprobs)
    # more choices than the bot's beam: the beam grows to n
    out = client.chat.completions.create(model="beam", messages=HI, n=12, max_tokens=4)
    assert len(out.choices) == 12


def test_temperature_means_sampling_and_zero_means_greedy(client, tiny_bots):
    out = client.chat.completions.create(model="beam", messages=HI, temperature=0.7, seed=3, max_tokens=8)
    sampled = tiny_bots["beam"].respond("hi there", strategy="sample", temperature=0.7, seed=3, max_len=8)
    assert out.choices[0].message.content == sampled.text
    out = client.chat.completions.create(model="beam", messages=HI, temperature=0, max_tokens=8)
    assert out.choices[0].message.content == tiny_bots["beam"].respond("hi there", strategy="greedy", max_len=8).text
    # an explicit strategy wins over the temperature rule
    out = client.chat.completions.create(model="beam", messages=HI, temperature=0.7, max_tokens=8,
                                         extra_body={"strategy": "beam"})
    assert out.choices[0].message.content == tiny_bots["beam"].respond("hi there", max_len=8).text


def test_stop_cuts_the_choice(client, tiny_bots):
    text = tiny_bots["greedy"].respond("hi there", max_len=10).text
    stop = text[len(text) // 2:][:2]
    out = client.chat.completions.create(model="greedy", messages=HI, max_tokens=10, stop=[stop])
    assert out.choices[0].message.content == text[:text.find(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_stream_sends_chunks_that_add_up_to_the_reply(client, tiny_bots):
    full = client.chat.completions.create(model="antilm", messages=HI, n=2, max_tokens=8)
    stream = client.chat.completions.create(model="antilm", messages=HI, n=2, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    texts, finish, usage, ids = ["", ""], [None, None], None, set()
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finish[c.index] = c.finish_reason or finish[c.index]
    assert texts == [c.message.content for c in full.choices]
    assert finish == [c.finish_reason for c in full.choices]
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    assert len(ids) == 1


def test_stream_ends_with_done(url):
    body = {"model": "greedy", "messages": HI, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("kwargs,param,words", [
    (dict(max_tokens=1000), "max_tokens", ("100",)),
    (dict(extra_body={"beam_sizee": 3}), "beam_sizee", ("unknown",)),
    (dict(extra_body={"antilm": "0.5"}), "antilm", ("number",)),
    (dict(temperature=9.0), "temperature", ("5",)),
    (dict(n=2, model="greedy"), "n", ("greedy",)),
    (dict(messages=[{"role": "system", "content": "hi"}]), "messages", ("user",)),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content", ("text",)),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role", ("user",)),
    (dict(messages=[*HI, {"role": "tool", "content": "42", "tool_call_id": "x"}]), "messages[1].role",
     ("assistant", "tool")),
    (dict(messages=[{"role": "function", "name": "f", "content": "42"}, *HI]), "messages[0].role", ("user",)),
    (dict(messages=[*HI, {"role": "assistant", "content": "hello"}]), "messages[1].role", ("last", "user's")),
    (dict(messages=[*HI, {"role": "assistant", "content": "hello"}, {"role": "system", "content": "x"}]),
     "messages[1].role", ("last", "assistant")),
    (dict(messages=[{"role": "assistant", "content": "hello"}]), "messages", ("user",)),
    (dict(messages=[{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, *HI]),
     "messages[0].content", ("text",)),
    (dict(messages=[{"role": "assistant", "content": "a" * 4001}, *HI]), "messages[0].content", ("4000",)),
    (dict(messages=[{"role": "assistant", "content": [{"type": "text", "text": "a" * 3000}] * 2}, *HI]),
     "messages[0].content", ("4000",)),
    (dict(messages=[]), "messages", ("at least 1",)),
    (dict(messages=[{"role": "user", "content": "   "}]), "messages", ("empty",)),
    (dict(presence_penalty=0.5), "presence_penalty", ("0",)),
    (dict(extra_body={"max_len": 5}, max_tokens=6), "max_tokens", ("disagree",)),
    (dict(extra_body={"strategy": "diverse_beam", "beam_size": 5, "num_groups": 2}), "num_groups", ("multiple",)),
    (dict(extra_body={"prefix": "   "}), "prefix", ("nothing left",)),
    (dict(model="greedy", extra_body={"antilm": 0.5}), "antilm", ("language model",)),
])
def test_bad_requests_raise_client_errors_naming_the_field(client, kwargs, param, words):
    kwargs = {"model": "beam", "messages": HI, **kwargs}
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(**kwargs)
    err = info.value.body
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], err


def test_unknown_model_is_404_model_not_found(client, url):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert info.value.body["code"] == "model_not_found" and "gpt-4o" in info.value.body["message"]
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["param"] == "body"
