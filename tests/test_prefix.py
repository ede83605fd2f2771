"""A forced reply prefix (``DecodeConfig.prefix``): exact scores on a scripted model, every strategy of the registry
on a tiny real model, the bots, and the surfaces that take it (the JSON API's settings, the OpenAI API's extra body
field, the command line), with a clear error for a prefix that cannot be forced.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_prefix.py
"""

import math

import httpx
import pytest
import torch
from helpers import api_app, cli, error_of, serve
from openai import OpenAI
from scripted import A, B, C, E, Scripted, classic_table, decode, lm_loves_a, tiny_models

from core.decoding import STRATEGIES, DecodeConfig, describe_settings, encode_prefix, generate

torch.set_num_threads(1)
log = math.log


def test_the_search_goes_on_from_the_prefix_and_counts_its_log_p():
    # unforced, beam finds "b </s>" (0.36); forced to start with a, the best is "a b </s>" (0.5 * 0.35)
    cfg = DecodeConfig(strategy="beam", beam_size=2, nbest=2, max_len=4)
    [free] = decode(Scripted(classic_table), cfg)
    assert free.tokens == [B, E]
    [r] = decode(Scripted(classic_table), cfg.with_overrides(prefix=str(A)))
    assert [h.tokens for h in r.nbest] == [[A, B, E], [A, E]]
    assert [h.score for h in r.nbest] == pytest.approx([log(0.5 * 0.35), log(0.5 * 0.3)], abs=1e-6)
    assert r.logprobs == pytest.approx([log(0.5), log(0.35), 0.0], abs=1e-6)
    # a two-token prefix: nothing is left to choose but the end
    [r] = decode(Scripted(classic_table), cfg.with_overrides(prefix=f"{A} {C}"))
    assert r.tokens == [A, C, E] and r.score == pytest.approx(log(0.5 * 0.25), abs=1e-6)


def test_the_prefix_tokens_pay_the_anti_lm_and_earn_the_bonus():
    cfg = DecodeConfig(strategy="beam", beam_size=2, nbest=2, max_len=4, antilm=0.5, gamma=1, n_bonus=0.25,
                       prefix=str(A))
    [r] = decode(Scripted(classic_table), cfg, lm=Scripted(lm_loves_a))
    h = r.nbest[0]
    assert h.tokens[0] == A
    assert h.parts["antilm"] == pytest.approx(-0.5 * log(0.9), abs=1e-6)  # the LM's log p of the forced a
    assert h.parts["bonus"] == pytest.approx(0.25 * (len(h.tokens) - 1))
    assert sum(h.parts.values()) == pytest.approx(h.score, abs=1e-6)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_starts_with_the_prefix(strategy):
    model, lm = tiny_models(seed=2)
    prefix = [11, 12, 13]
    extra = dict(top_k=4, penalty_alpha=0.5) if strategy == "contrastive" else {}
    if strategy == "diverse_beam":
        extra = dict(num_groups=2, diversity_penalty=1.0)
    cfg = DecodeConfig(strategy=strategy, beam_size=4, nbest=4, max_len=8, seed=3,
                       prefix=" ".join(map(str, prefix)), **extra)
    replies = generate(model, [[5, 9, 12], [20, 21]], cfg, lm=lm)
    for r in replies:
        assert r.nbest and all(h.tokens[:3] == prefix for h in r.nbest)
        assert all(len(h.tokens) <= 8 for h in r.nbest)


def test_a_prefix_as_long_as_max_len_is_the_whole_reply():
    model, _ = tiny_models(seed=2)
    [r] = generate(model, [[5, 9]], DecodeConfig(max_len=3, prefix="11 12 13"))
    assert r.tokens == [11, 12, 13]


@pytest.mark.parametrize(("prefix", "max_len", "message"), [
    ("   ", 10, "nothing left"),
    ("4 " * 11, 10, "11 tokens, longer than max_len=10"),
    ("a b", 10, "give token ids separated by spaces"),
    ("2", 10, "special token"),
    ("3", 10, "cannot encode part of it"),
])
def test_a_prefix_that_cannot_be_forced_is_a_clear_error(prefix, max_len, message):
    with pytest.raises(ValueError, match="prefix") as e:
        encode_prefix(prefix, None, max_len)
    assert message in str(e.value)


def test_bots_take_the_prefix_after_a_conversation(tiny_bots):
    bot = tiny_bots["antilm"]
    r = bot.respond("why not?", history=["want to go hiking?", "no"], prefix="hello there")
    assert r.text.startswith("hello there") and r.settings["prefix"] == "hello there"
    assert describe_settings(r.settings).endswith("· starts with 'hello there' · max 30")
    assert bot.respond("hi", prefix="</s>").text.startswith("</s>")  # the characters, never the end token
    with pytest.raises(ValueError, match="longer than max_len"):
        bot.respond("hi", prefix="word " * 40)
    with pytest.raises(ValueError, match="at most 400"):
        DecodeConfig(prefix="x" * 401)
    with pytest.raises(ValueError, match="must be a string"):
        DecodeConfig(prefix=3)


@pytest.fixture(scope="module")
def url(tiny_ctx):
    with serve(api_app(tiny_ctx, rate_limit=None)) as u:
        yield u


def test_the_json_and_openai_apis_take_the_prefix(url, tiny_bots):
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/api/v1/reply", json={"bot": "beam", "message": "hi there", "settings": {"prefix": "so what"}})
        assert r.status_code == 200, r.text
        assert r.json()["text"] == tiny_bots["beam"].respond("hi there", prefix="so what").text
        assert r.json()["text"].startswith("so what") and r.json()["settings"]["prefix"] == "so what"
        bad = c.post("/api/v1/reply", json={"bot": "beam", "message": "hi", "settings": {"prefix": "word " * 40}})
        assert bad.status_code == 422 and "longer than max_len" in error_of(bad)["message"]
        long = c.post("/api/v1/reply", json={"bot": "beam", "message": "hi", "settings": {"prefix": "x" * 401}})
        assert long.status_code == 422 and "prefix" in str(error_of(long))
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="greedy", messages=[{"role": "user", "content": "hi there"}],
                                         extra_body={"prefix": "well"})
    assert out.choices[0].message.content == tiny_bots["greedy"].respond("hi there", prefix="well").text
    assert out.choices[0].message.content.startswith("well")


def test_the_command_line_takes_the_prefix(tiny_checkpoints, tiny_bots, tmp_path):
    (tmp_path / "p.txt").write_text("hi there\n")
    out = cli("respond", "--file", str(tmp_path / "p.txt"), "--checkpoints", str(tiny_checkpoints), "--bots",
              "greedy", "--prefix", "well", "--format", "json")
    assert '"reply": "' + tiny_bots["greedy"].respond("hi there", prefix="well").text + '"' in out.stdout
    bad = cli("respond", "--file", str(tmp_path / "p.txt"), "--checkpoints", str(tiny_checkpoints), "--bots",
              "greedy", "--prefix", "word " * 40, check=False)
    assert bad.returncode == 2 and "longer than max_len" in bad.stderr and "Traceback" not in bad.stderr
