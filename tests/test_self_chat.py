"""Self-chat: the generalised simulated dialogues (two bots alternate, the ending rules, the turn-by-turn generator),
the Self-chat tab's callbacks on the tiny real bots through the scheduler, ``POST /api/v1/self_chat`` over real
HTTP and the ``/self_chat`` Gradio endpoint on the launched app.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_self_chat.py
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from helpers import FullScheduler, api_app, error_of, serve

from core.corpora import opening_messages
from core.evaluation.evaluate import (
    END_REASONS,
    Dialogue,
    converse,
    held_out_openings,
    load_split_for,
    simulate,
)
from demo_app import self_chat as sc
from demo_app.context import AppContext
from demo_app.errors import RATE_LIMIT
from demo_app.tabs import self_chat as tab


class Scripted:
    """A named bot answering from a table (default: words never used before), with a score per reply; records the
    prompts and histories of each batch it decodes."""

    def __init__(self, name: str, table: dict[str, str] | None = None, score: float = -1.0):
        self.name, self.table, self.score, self.calls, self.n = name, table or {}, score, [], 0

    def encode_prompt(self, text: str, history=None) -> list[int]:
        if not text.strip():
            raise ValueError("prompt is empty")
        return [1]

    def respond_batch(self, prompts, *, histories=None, **overrides):
        self.calls.append((list(prompts), [list(h) for h in histories]))
        out = []
        for p in prompts:
            self.n += 1
            text = self.table.get(p, f"{self.name}{self.n} says{self.n} something{self.n}")
            out.append(SimpleNamespace(text=text, score=self.score - self.n))
        return out


# ----------------------------------------------------------------------------- the rules, on scripted bots


def test_two_bots_alternate_a_first_each_reading_the_conversation():
    a, b = Scripted("alice"), Scripted("bob", score=-10.0)
    [d] = simulate(a, ["hello"], bot_b=b, dull=set(), max_turns=5)
    assert [t.agent for t in d.said] == [0, 1, 0, 1, 0] and d.end == "limit"
    assert [t.bot for t in d.said] == ["alice", "bob", "alice", "bob", "alice"]
    assert [t.score for t in d.said] == [-2.0, -11.0, -3.0, -12.0, -4.0]
    assert a.calls[0] == (["hello"], [[]])  # A answers the opening
    assert b.calls[0] == ([d.turns[1]], [["hello"]])  # B answers A after the opening
    assert a.calls[1] == ([d.turns[2]], [d.turns[:2]])
    assert d.to_json()["turns"][1] == {"agent": "B", "bot": "bob", "text": d.turns[2], "score": -11.0}


def test_each_end_reason_by_the_rules():
    dull = {"i don't know"}
    # a dull turn of agent B ends it; the turn is kept as the ending, not counted
    a, b = Scripted("a", {"hi": "where do you live?"}), Scripted("b", {"where do you live?": "I don't know."})
    [d] = simulate(a, ["hi"], bot_b=b, dull=dull)
    assert d.turns == ["hi", "where do you live?"] and d.end == "dull" and d.ending.text == "I don't know."
    assert d.ending.agent == 1 and d.ending.bot == "b"
    # repeating the OTHER agent's turn goes on; repeating one's OWN previous turn ends it (the opening is B's)
    a = Scripted("a", {"hi": "do you like music", "do you like music": "you like music"})
    b = Scripted("b", {"do you like music": "do you like music"})  # all of A's words, none of its own: goes on
    [d] = simulate(a, ["hi"], bot_b=b, dull=set())
    assert d.turns == ["hi", "do you like music", "do you like music"]
    assert d.end == "repetition" and d.ending.agent == 0  # all 3 of A's words are from its own previous turn
    a, b = Scripted("a", {"hi there": "nice to meet you"}), Scripted("b", {"nice to meet you": "hi there"})
    [d] = simulate(a, ["hi there"], bot_b=b, dull=set())
    assert d.end == "repetition" and d.ending.agent == 1 and d.turns == ["hi there", "nice to meet you"]
    # an empty turn counts as dull; the turn limit ends the others
    [d] = simulate(Scripted("a", {"hi": "   "}), ["hi"], bot_b=Scripted("b"), dull=set())
    assert d.end == "dull" and d.said == [] and d.to_json()["end_reason"] == END_REASONS["dull"]
    [d] = simulate(Scripted("a"), ["hi"], bot_b=Scripted("b"), dull=set(), max_turns=3)
    assert d.end == "limit" and len(d.said) == 3 and d.ending is None


def test_the_generator_yields_each_turn_as_it_is_judged():
    a, b = Scripted("a", {"x": "y"}), Scripted("b", {"y": "i don't know"})
    dialogues = [Dialogue("hello"), Dialogue("x")]
    steps = converse(a, b, dialogues, max_turns=3, dull={"i don't know"})
    first = next(steps)
    assert (first.index, first.turn.agent, first.dialogue.end) == (0, 0, None) and b.calls == []  # lazy
    seen = [(s.index, s.turn.agent, s.dialogue.end, s.dialogue.ending is s.turn) for s in steps]  # as yielded
    assert seen == [(1, 0, None, False), (0, 1, None, False), (1, 1, "dull", True), (0, 0, "limit", False)]
    assert len(b.calls) == 1 and b.calls[0][0] == [d.turns[1] for d in dialogues]  # both live: one batch
    with pytest.raises(ValueError, match="fresh"):
        next(converse(a, b, dialogues))


# ----------------------------------------------------------------------------- on the tiny real bots


def test_real_bots_alternate_and_one_bot_twice_is_the_evaluations_simulation(tiny_bots):
    greedy, rl = tiny_bots["greedy"], tiny_bots["rl"]
    [d] = simulate(greedy, ["hi, how are you?"], bot_b=rl, dull=set(), overlap_limit=1.0, max_turns=4)
    assert [t.bot for t in d.said] == ["greedy", "rl", "greedy", "rl"][: len(d.said)] and d.said
    for i, t in enumerate(d.said):  # each turn is that bot's reply to the conversation so far, with its score
        reply = tiny_bots[t.bot].respond(d.turns[i], history=d.turns[:i])
        assert t.text == reply.text and t.score == pytest.approx(reply.score, rel=1e-5)
    openings = ["hi", "what do you do?", "do you like dogs?"]
    once, twice = simulate(greedy, openings), simulate(greedy, openings, bot_b=greedy)
    assert [(x.turns, x.end) for x in once] == [(y.turns, y.end) for y in twice]


def test_held_out_openings_are_the_test_splits(tiny_bots):
    openings = held_out_openings(tiny_bots["rl"])
    assert openings and set(openings) <= set(opening_messages(load_split_for(tiny_bots["rl"]).test))


def test_without_the_corpus_the_draw_and_the_batch_say_so(tiny_ctx, monkeypatch):
    import core.evaluation.evaluate

    def missing(*args):
        raise ModuleNotFoundError("No module named 'chitchat_dataset'")

    monkeypatch.setattr(core.evaluation.evaluate, "_test_openings", missing)  # as on a Space without the corpus package
    opening, status = tab.on_draw(tiny_ctx)
    assert opening == "" and status.startswith("⚠ no held-out openings") and "chitchat_dataset" in status
    [(status, *_)] = list(tab.on_batch(tiny_ctx, [sc.pair_key("greedy", "greedy")], 5, 4))
    assert status.startswith("⚠ no held-out openings")


def test_the_tab_streams_a_self_chat_through_the_scheduler(tiny_ctx):
    before = tiny_ctx.scheduler.stats()["requests"]
    updates = list(tab.on_self_chat(tiny_ctx, "greedy", "beam", "hi, how are you?", 6))
    chat, status, data = updates[-1]
    n = data["length"]
    assert len(updates) == 1 + n + (data["ending_turn"] is not None)  # the opening, then one update per turn
    assert [len(u[0]) for u in updates] == list(range(1, len(updates) + 1))
    assert [t["agent"] for t in data["turns"]] == ["A", "B", "A", "B", "A", "B"][:n]
    assert [t["bot"] for t in data["turns"]] == ["greedy", "beam", "greedy", "beam", "greedy", "beam"][:n]
    assert all(isinstance(t["score"], float) for t in data["turns"])
    assert data["end"] in END_REASONS and f"Ended after {n} turn" in status
    assert chat[1]["role"] == "assistant" and "A · Greedy · score" in chat[1]["content"]
    if data["ending_turn"]:
        assert "<s>" in chat[-1]["content"] and "not counted" in chat[-1]["content"]
    assert tiny_ctx.scheduler.stats()["requests"] - before == len(updates) - 1  # every decode went through it
    direct = simulate(tiny_ctx.bots["greedy"], ["hi, how are you?"], bot_b=tiny_ctx.bots["beam"], max_turns=6)[0]
    assert [t["text"] for t in data["turns"]] == [t.text for t in direct.said] and data["end"] == direct.end


@pytest.mark.parametrize("args, field", [
    (("nobody", "beam", "hi", 8), "bot_a"), (("greedy", "nobody", "hi", 8), "bot_b"),
    (("greedy", "beam", " \t", 8), "opening"), (("greedy", "beam", None, 8), "opening"),
    (("greedy", "beam", "x" * 5000, 8), "opening"), (("greedy", "beam", "hi", 0), "max_turns"),
    (("greedy", "beam", "hi", 21), "max_turns"), (("greedy", "beam", "hi", 2.5), "max_turns"),
    (("greedy", "beam", "hi", "8"), "max_turns")])
def test_bad_input_gets_one_message_naming_its_field(tiny_ctx, args, field):
    [(chat, status, data)] = list(tab.on_self_chat(tiny_ctx, *args))
    assert chat == [] and status.startswith("⚠") and data["param"] == field and field in data["error"]


def test_batch_mode_runs_every_pair_on_the_same_openings(tiny_ctx):
    pairs = [sc.pair_key("greedy", "greedy"), sc.pair_key("rl", "beam")]
    updates = list(tab.on_batch(tiny_ctx, pairs, 5, 4, 1))
    status, fig, summary, dialogues = updates[-1]
    assert len(updates) == 3 and status.startswith("Done: 5 held-out openings")
    assert list(summary["pair"]) == pairs and list(summary["dialogues"]) == [5, 5]
    shares = summary[[f"end_{r}" for r in END_REASONS]].sum(axis=1)
    assert shares.round(6).tolist() == [1.0, 1.0]
    assert len(dialogues) == 10 and dialogues["turns"].between(0, 4).all()
    assert list(dialogues["opening"][:5]) == list(dialogues["opening"][5:])  # the same openings for each pair
    assert len(fig.data) == 4  # per pair: the length distribution and the end reasons
    assert list(fig.data[0].y) == [int((dialogues["turns"][:5] == n).sum()) for n in range(5)]
    for bad, field in (([], "pairs"), (["greedy ↔ nobody"], "pairs")):
        [(status, *_)] = list(tab.on_batch(tiny_ctx, bad, 5, 4))
        assert status.startswith("⚠") and field in status
    [(status, *_)] = list(tab.on_batch(tiny_ctx, pairs, 500, 4))
    assert "k must be a whole number from 1 to 50" in status


# ----------------------------------------------------------------------------- the JSON route and Gradio endpoint


def test_json_route_runs_a_self_chat(launched_app, tiny_ctx):
    body = {"bot_a": "rl", "bot_b": "greedy", "opening": "what do you do for fun?", "max_turns": 5}
    r = httpx.post(f"{launched_app.rstrip('/')}/api/v1/self_chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()
    direct = simulate(tiny_ctx.bots["rl"], [body["opening"]], bot_b=tiny_ctx.bots["greedy"], max_turns=5)[0]
    assert [t["text"] for t in data["turns"]] == [t.text for t in direct.said] and data["end"] == direct.end
    assert data["length"] == len(data["turns"]) <= 5 and data["end_reason"] == END_REASONS[data["end"]]
    assert [t["agent"] for t in data["turns"]] == ["A", "B", "A", "B", "A"][: data["length"]]
    assert (data["bot_a"], data["bot_b"]) == ("rl", "greedy")
    r = httpx.post(f"{launched_app.rstrip('/')}/api/v1/self_chat", json={"bot_a": "beam", "opening": "hi"}, timeout=120)
    assert r.status_code == 200 and r.json()["bot_b"] == "beam"  # one bot twice; 8 turns at most
    assert {t["bot"] for t in r.json()["turns"]} <= {"beam"} and r.json()["length"] <= 8


@pytest.mark.parametrize("body, field", [
    ({"bot_a": "nobody", "opening": "hi"}, "bot_a"), ({"bot_a": "rl", "bot_b": "nobody", "opening": "hi"}, "bot_b"),
    ({"bot_a": "rl", "opening": "  \u0000 "}, "opening"), ({"bot_a": "rl"}, "opening"),
    ({"bot_a": "rl", "opening": "hi", "max_turns": 0}, "max_turns"),
    ({"bot_a": "rl", "opening": "hi", "max_turns": 21}, "max_turns"),
    ({"bot_a": "rl", "opening": "hi", "max_turns": "8"}, "max_turns"),
    ({"bot_a": "rl", "opening": "hi", "turns": 3}, "turns"), ({"bot_a": "", "opening": "hi"}, "bot_a"),
    ({"bot_a": "rl", "opening": 7}, "opening")])
def test_json_route_names_the_bad_field(launched_app, body, field):
    r = httpx.post(f"{launched_app.rstrip('/')}/api/v1/self_chat", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert error_of(r)["param"] == field


def test_json_route_is_rate_limited_and_busy_is_a_503(tiny_ctx, tiny_bots):
    limited = api_app(tiny_ctx).openapi()["paths"]["/api/v1/self_chat"]["post"]["responses"]["429"]
    assert RATE_LIMIT in limited["description"]  # the route's declared rate
    body = {"bot_a": "greedy", "opening": "hi", "max_turns": 1}
    with serve(api_app(tiny_ctx, rate_limit="2/minute")) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert [c.post("/api/v1/self_chat", json=body).status_code for _ in range(3)] == [200, 200, 429]
    busy = AppContext(bots=tiny_bots, scheduler=FullScheduler(tiny_bots), checkpoint_dir=tiny_ctx.checkpoint_dir)
    with serve(api_app(busy, rate_limit=None)) as url:
        r = httpx.post(f"{url}/api/v1/self_chat", json=body, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_gradio_endpoint_returns_the_turns_and_the_end_reason(launched_app, tmp_path):
    from gradio_client import Client

    client = Client(launched_app, verbose=False, download_files=str(tmp_path))
    assert "/self_chat" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    chat, status, data = client.predict(bot_a="antilm", bot_b="rl", opening="do you have any pets?", max_turns=3,
                                        api_name="/self_chat")
    assert data["end"] in END_REASONS and data["length"] == len(data["turns"]) <= 3
    assert [t["bot"] for t in data["turns"]] == ["antilm", "rl", "antilm"][: data["length"]]
    assert f"Ended after {data['length']} turn" in status and len(chat) >= 1 + data["length"]
    chat, status, data = client.predict(bot_a="antilm", bot_b="rl", opening="", max_turns=3, api_name="/self_chat")
    assert status.startswith("⚠") and data["param"] == "opening"
