"""The side-by-side, attention and batch tabs' callbacks, the decoder controls' policy (demo_app.controls) and the
chat rendering (demo_app.render) called directly (no server, no browser), on the tiny checkpoints of conftest.py."""

import contextlib
import dataclasses
import json
import threading
import time
import types
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from core.evaluation.metrics import distinct_n, mean_length
from core.serving import BatchScheduler
from demo_app import controls, render
from demo_app.context import AppContext
from demo_app.model_info import checkpoint_infos, read_report, training_curves
from demo_app.tabs import attention, batch
from demo_app.tabs import side_by_side as sbs

NAMES = ["greedy", "beam", "antilm", "rl"]


@pytest.fixture(scope="module")
def defaults(tiny_bots):
    return controls.default_settings(tiny_bots)


@contextlib.contextmanager
def context(bots):
    """An app context over ``bots`` with its own batching scheduler (closed at the end)."""
    scheduler = BatchScheduler(bots, threads=1)
    try:
        yield AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=Path("."))
    finally:
        scheduler.close()


def run_chat(bots, message, histories=None, **values):
    with context(bots) as ctx:
        return list(sbs.chat(ctx, message, histories or [[] for _ in bots], values))


def run_rerun(bots, last_prompt, histories, values):
    with context(bots) as ctx:
        return list(sbs.rerun(ctx, last_prompt, histories, values))


def run_batch(bots, *args, **kwargs):
    with context(bots) as ctx:
        return batch.batch_compare(ctx, *args, **kwargs)


# ----------------------------------------------------------------------------- controls


def test_controls_start_at_the_registry_values(tiny_bots, defaults):
    assert defaults["beam_size"] == 10  # bots.json: beam K=10
    antilm = tiny_bots["antilm"].defaults  # the anti-LM bot's settings from bots.json
    assert (defaults["antilm"], defaults["gamma"]) == (antilm.antilm, antilm.gamma) and antilm.antilm > 0
    assert defaults["max_len"] == tiny_bots["beam"].defaults.max_len
    assert defaults["sample"] is False and defaults["n_bonus"] == 0.0
    assert set(defaults) == set(controls.CONTROL_NAMES)


def test_each_control_acts_only_on_the_bots_it_fits(tiny_bots):
    fits = {name: [b for b in NAMES if controls.applies_to(tiny_bots[b], name)] for name in controls.CONTROL_NAMES}
    assert fits["beam_size"] == ["beam", "antilm", "rl"]  # greedy has no beam
    assert fits["antilm"] == fits["gamma"] == ["antilm", "rl"]  # the bots with a language model
    assert fits["mmi_lambda"] == ["beam", "antilm", "rl"]  # the bots with a backward model
    assert fits["n_bonus"] == fits["max_len"] == NAMES


def test_overrides_for_each_bot(tiny_bots, defaults):
    settings = {**defaults, "beam_size": 4, "antilm": 0.2, "temperature": 0.7}
    assert "beam_size" not in controls.overrides_for(tiny_bots["greedy"], settings)
    beam = controls.overrides_for(tiny_bots["beam"], settings)
    assert beam["beam_size"] == 4 and "antilm" not in beam and "temperature" not in beam  # not sampling
    assert controls.overrides_for(tiny_bots["antilm"], settings)["antilm"] == 0.2
    sampled = controls.overrides_for(tiny_bots["rl"], {**settings, "sample": True})
    assert sampled["strategy"] == "sample" and sampled["temperature"] == 0.7
    assert "strategy" not in controls.overrides_for(tiny_bots["greedy"], {**settings, "sample": True})


def test_changed_settings_keep_only_the_moved_controls(defaults):
    assert controls.changed_settings(defaults, defaults) == {}
    moved = {**defaults, "beam_size": 3, "sample": True}
    assert controls.changed_settings(moved, defaults) == {"beam_size": 3, "sample": True}


def test_the_sample_checkbox_turns_sampling_on_and_off(tiny_bots):
    sampler = dataclasses.replace(tiny_bots["rl"], defaults=tiny_bots["rl"].defaults.with_overrides(strategy="sample"))
    assert controls.overrides_for(sampler, {"temperature": 0.5}) == {"temperature": 0.5}  # it samples by default
    assert controls.overrides_for(sampler, {"sample": False, "temperature": 0.5}) == {"strategy": "beam"}
    assert controls.overrides_for(tiny_bots["beam"], {"temperature": 0.5}) == {}  # beam search has no temperature


@pytest.fixture(scope="module")
def mixed_bots(tiny_bots):
    """Two beam bots with their own settings: beam K=10 and no bonus, K=5 with a length bonus of 0.3."""
    bots = dict(tiny_bots)
    bots["rl"] = dataclasses.replace(bots["rl"], defaults=bots["rl"].defaults.with_overrides(beam_size=5,
                                                                                            n_bonus=0.3))
    return bots


def test_untouched_controls_leave_each_bot_at_its_own_settings(mixed_bots):
    start = controls.default_settings(mixed_bots)
    assert (start["beam_size"], start["n_bonus"]) == (10, 0.0)  # from the first bots each control fits
    for values in ({}, start):  # nothing sent, or every control at its starting value (what the page sends)
        s = {n: r["settings"] for n, r in run_chat(mixed_bots, "hello there", **values)[-1].details["bots"].items()}
        beam = mixed_bots["beam"].defaults
        assert (s["beam"]["beam_size"], s["beam"]["n_bonus"]) == (10, beam.n_bonus)  # bots.json's own
        assert (s["rl"]["beam_size"], s["rl"]["n_bonus"]) == (5, 0.3)
        assert s["greedy"]["strategy"] == "greedy"
        assert s["antilm"]["antilm"] == mixed_bots["antilm"].defaults.antilm > 0


def test_a_moved_control_applies_to_every_bot_it_fits(mixed_bots):
    last = run_chat(mixed_bots, "hello there", beam_size=3, n_bonus=0.1)[-1]
    s = {n: r["settings"] for n, r in last.details["bots"].items()}
    assert s["beam"]["beam_size"] == s["antilm"]["beam_size"] == s["rl"]["beam_size"] == 3
    assert all(v["n_bonus"] == 0.1 for v in s.values())
    assert s["greedy"]["strategy"] == "greedy"
    again = run_rerun(mixed_bots, "hello there", last.histories, {"n_bonus": 0.0})[-1]
    s = {n: r["settings"] for n, r in again.details["bots"].items()}
    assert s["rl"]["beam_size"] == 5 and s["rl"]["n_bonus"] == 0.3  # back at the start: each bot's own again


@pytest.mark.parametrize("given, used, note", [
    ({"beam_size": 2.6}, {"beam_size": 3}, "rounded to 3"),
    ({"max_len": 11.4}, {"max_len": 11}, "rounded to 11"),
    ({"sample": "yes"}, {"sample": False}, "not true/false"),
])
def test_resolve_settings_rounds_and_explains(defaults, given, used, note):
    """What reaches the callback from Gradio (out-of-range and non-numeric values are refused by Gradio first:
    tests/test_app_api.py)."""
    settings, notes = controls.resolve_settings(given, defaults)
    for k, v in used.items():
        assert settings[k] == v
    assert any(note in n for n in notes), notes


def test_resolve_settings_keeps_good_values_silently(defaults):
    settings, notes = controls.resolve_settings({**defaults, "beam_size": 5.0}, defaults)
    assert settings["beam_size"] == 5 and isinstance(settings["beam_size"], int) and notes == []


# ----------------------------------------------------------------------------- chat, re-run, clear


def test_chat_streams_each_reply_as_it_arrives(tiny_bots):
    turns = run_chat(tiny_bots, "hello there, how are you?")
    n = len(tiny_bots)
    first, middle, last = turns[0], turns[1:-1], turns[-1]
    assert 2 <= len(turns) <= 1 + n  # the user message, then one update per wave of finished bots
    assert all(h[-1]["content"] == render.PENDING for h in first.histories) and first.details["bots"] == {}
    answered = [sum(h[-1]["content"] != render.PENDING for h in t.histories) for t in turns]
    assert answered == sorted(answered) and answered[0] == 0 and answered[-1] == n  # replies only ever arrive
    for turn in middle:
        assert len(turn.details["bots"]) == answered[turns.index(turn)] < n
        assert turn.records is sbs.KEEP and f"of {n} replies" in turn.status  # the heavy records: only at the end
    assert last.message == "" and last.last_prompt == "hello there, how are you?"
    assert f"All {n} replies" in last.status
    for name, h in zip(NAMES, last.histories):
        assert [m["role"] for m in h] == ["user", "assistant"]
        assert "score" in h[1]["content"] and " ms" in h[1]["content"]
        record = last.records["bots"][name]
        assert record["text"].strip() and record["tokens"]
        assert len(record["attention"]) == len(record["tokens"]) == len(record["logprobs"])
        assert "attention" not in last.details["bots"][name]  # the heavy parts stay on the server
    assert last.details["bots"]["greedy"]["settings"]["strategy"] == "greedy"
    assert len(last.nbest[1]["data"]) == 5 and last.nbest[1]["headers"] == render.NBEST_COLUMNS
    assert len(last.outputs()) == 2 + 2 * len(NAMES) + 3


def test_sliders_change_the_settings_of_the_bots_they_fit(tiny_bots):
    last = run_chat(tiny_bots, "what do you do for fun?", beam_size=3, antilm=0.0, n_bonus=0.25, max_len=12)[-1]
    s = {name: r["settings"] for name, r in last.details["bots"].items()}
    assert s["beam"]["beam_size"] == s["rl"]["beam_size"] == s["antilm"]["beam_size"] == 3
    assert s["antilm"]["antilm"] == 0.0 and s["greedy"]["strategy"] == "greedy"
    assert all(v["n_bonus"] == 0.25 and v["max_len"] == 12 for v in s.values())
    assert "beam K=3" in last.histories[1][-1]["content"]


def test_sampling_and_mmi_controls(tiny_bots):
    last = run_chat(tiny_bots, "do you have any pets?", sample=True, temperature=0.8, top_k=20,
                    mmi_lambda=0.5)[-1]
    s = {name: r["settings"] for name, r in last.details["bots"].items()}
    assert s["beam"]["strategy"] == "sample" and s["beam"]["top_k"] == 20
    assert s["greedy"]["strategy"] == "greedy"
    assert s["antilm"]["mmi_lambda"] == 0.5 and s["beam"]["mmi_lambda"] == 0.5
    assert s["greedy"]["mmi_lambda"] == 0.0  # no backward model


@pytest.mark.parametrize("message", ["", "   \n\t ", "\x00\x01\x1b", None, 42])
def test_empty_messages_get_a_clear_message_and_change_nothing(tiny_bots, message):
    history = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] for _ in NAMES]
    [turn] = run_chat(tiny_bots, message, history)
    assert "Type a message first" in turn.status
    assert turn.histories == history and turn.nbest == [sbs.KEEP] * len(NAMES)
    assert turn.details is sbs.KEEP and turn.last_prompt is sbs.KEEP  # re-run still answers the last message


def test_markup_is_escaped_and_never_reaches_the_page_as_html(tiny_bots):
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)"> **bold** & co'
    last = run_chat(tiny_bots, evil)[-1]
    shown = last.histories[0][0]["content"]
    assert "<script" not in shown and "<img" not in shown
    assert "&lt;script&gt;" in shown and "&amp; co" in shown
    assert last.details["prompt"] == evil  # the bots got the text as typed
    for h in last.histories:
        reply = h[-1]["content"]
        text = reply.split('<br><small class="reply-meta">')[0]
        assert "<" not in text.replace("<br>", "").replace("<em>", "").replace("</em>", "")


def test_huge_emoji_and_control_character_messages_are_answered(tiny_bots):
    huge = ("word " * 20_000)[:100_000]
    last = run_chat(tiny_bots, huge)[-1]
    assert len(last.details["bots"]) == len(NAMES) and all("text" in r for r in last.details["bots"].values())
    assert "Long message (100,000 characters)" in last.status
    assert len(last.histories[0][0]["content"]) < 1200  # shown by its tail
    for message in ["hello 😀🎉 how are you? 👍🏽", "hi\x00 there\x07\x1b[31m red", "ﬁne \u202e\u200b"]:
        records = run_chat(tiny_bots, message)[-1].details["bots"]
        assert all("error" not in r for r in records.values()), records


def test_a_failing_bot_does_not_stop_the_others(tiny_bots):
    broken = dataclasses.replace(tiny_bots["rl"])

    def explode(prompts, **overrides):
        raise RuntimeError("weights on fire")

    broken.respond_batch = explode
    bots = {**tiny_bots, "rl": broken}
    last = run_chat(bots, "hello")[-1]
    assert "weights on fire" in last.details["bots"]["rl"]["error"]
    assert "weights on fire" in last.histories[3][-1]["content"]
    assert all("text" in last.details["bots"][n] for n in ["greedy", "beam", "antilm"])


def test_rerun_replaces_the_last_replies_with_new_settings(tiny_bots):
    first = run_chat(tiny_bots, "where are you from?", beam_size=10)[-1]
    as_gradio_gives_them = [[{**m, "content": [{"type": "text", "text": m["content"]}]} for m in h]
                            for h in first.histories]  # Gradio 6 hands contents back as lists of parts
    turns = run_rerun(tiny_bots, first.last_prompt, as_gradio_gives_them, {"beam_size": 2})
    last = turns[-1]
    assert [len(h) for h in last.histories] == [2] * len(NAMES)
    assert last.details["bots"]["beam"]["settings"]["beam_size"] == 2
    assert render.message_text(last.histories[0][0]) == render.message_text(first.histories[0][0])
    assert last.last_prompt == "where are you from?"


def test_each_column_is_a_conversation_its_bot_reads(tiny_bots):
    """The second message of a column is answered after that column's first exchange (the bot's own reply
    included), as Bot.respond with that history answers it; a new conversation forgets it."""
    first = run_chat(tiny_bots, "do you like <b>football</b> & tennis?")[-1]
    second = run_chat(tiny_bots, "why not?", first.histories)[-1]
    for name, h in zip(NAMES, second.histories):
        record = second.records["bots"][name]
        assert render.conversation_of(h) == ["do you like <b>football</b> & tennis?",
                                             first.records["bots"][name]["text"], "why not?", record["text"]]
        history = ["do you like <b>football</b> & tennis?", first.records["bots"][name]["text"]]
        window = tiny_bots[name].encode_prompt("why not?", history)  # turn </s> reply </s> message, cut to 20
        assert record["source_tokens"] == [tiny_bots[name].tokenizer.id_to_token(i) for i in window]
        assert "</s>" in record["source_tokens"]
    greedy = tiny_bots["greedy"]
    history = ["do you like <b>football</b> & tennis?", first.records["bots"]["greedy"]["text"]]
    assert second.records["bots"]["greedy"]["text"] == greedy.respond("why not?", history=history).text
    alone = run_chat(tiny_bots, "why not?", sbs.clear(tiny_bots).histories)[-1]
    assert alone.records["bots"]["greedy"]["source_tokens"].count("</s>") == 0
    assert alone.records["bots"]["greedy"]["text"] == greedy.respond("why not?").text


def test_conversation_of_skips_placeholders_errors_and_small_print():
    empty = render.bot_message({"text": "", "score": -1.0, "latency_s": 0.1, "settings": {"strategy": "greedy"}})
    history = [render.user_message("a < b\nc"), empty,
               render.user_message("again"), render.bot_message({"error": "the server is busy"}),
               render.user_message("x" * (render.MAX_SHOWN_CHARS + 5)),
               {"role": "assistant", "content": render.PENDING}]
    assert render.conversation_of(history) == ["a < b\nc", "", "again", "x" * render.MAX_SHOWN_CHARS]


def test_a_released_slider_answers_the_last_message_again_and_a_newer_release_supersedes_it(tiny_bots):
    """live_rerun (what a slider's release runs): before any message nothing changes; a release answers the last
    message again with the new values; a newer release of the same session stops the older run at its next step
    while another session's run goes on."""
    first = run_chat(tiny_bots, "where are you from?", beam_size=10)[-1]
    with context(tiny_bots) as ctx:
        live = sbs.LiveRuns()
        [idle] = sbs.live_rerun(ctx, live, "s1", None, None, {"beam_size": 2}, debounce_s=0)
        assert idle.histories == [sbs.KEEP] * len(NAMES) and idle.status is sbs.KEEP
        done = list(sbs.live_rerun(ctx, live, "s1", first.last_prompt, first.histories, {"beam_size": 2},
                                   debounce_s=0))
        assert done[-1].details["bots"]["beam"]["settings"]["beam_size"] == 2
        assert [len(h) for h in done[-1].histories] == [2] * len(NAMES)
        assert done[-1].last_prompt == "where are you from?"

        older = sbs.live_rerun(ctx, live, "s1", first.last_prompt, first.histories, {"beam_size": 3}, debounce_s=0)
        other = sbs.live_rerun(ctx, live, "s2", first.last_prompt, first.histories, {"beam_size": 3}, debounce_s=0)
        started, other_started = next(older), next(other)  # both runs begun: the placeholders are out
        newer = list(sbs.live_rerun(ctx, live, "s1", first.last_prompt, first.histories, {"beam_size": 4},
                                    debounce_s=0))
        assert list(older) == []  # superseded: no further step
        rest = list(other)
        assert rest and rest[-1].details["bots"]["beam"]["settings"]["beam_size"] == 3  # s2 is not s1's to stop
        assert newer[-1].details["bots"]["beam"]["settings"]["beam_size"] == 4
        assert started.histories != [sbs.KEEP] * len(NAMES) and other_started.histories != [sbs.KEEP] * len(NAMES)


def test_a_release_within_the_debounce_of_a_newer_one_decodes_nothing(tiny_bots, monkeypatch):
    """The older release waits out its debounce; a newer release of the same session comes meanwhile; the older one
    then yields nothing. The wait is an event the test opens, so no timing is involved."""
    waiting, go, calls = threading.Event(), threading.Event(), []

    def debounce(seconds: float) -> None:  # the first release waits for the test; later ones pass at once
        calls.append(seconds)
        if len(calls) == 1:
            waiting.set()
            assert go.wait(60)

    monkeypatch.setattr(sbs, "time", types.SimpleNamespace(sleep=debounce, perf_counter=time.perf_counter))
    first = run_chat(tiny_bots, "where are you from?")[-1]
    with context(tiny_bots) as ctx:
        live = sbs.LiveRuns()
        older = sbs.live_rerun(ctx, live, "s1", first.last_prompt, first.histories, {"beam_size": 2})
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(list, older)  # takes its token, then waits in the debounce
            assert waiting.wait(60)
            newer = list(sbs.live_rerun(ctx, live, "s1", first.last_prompt, first.histories, {"beam_size": 3}))
            go.set()  # the older release's debounce ends after the newer release began
            [skipped] = result.result(timeout=60)
        assert skipped.histories == [sbs.KEEP] * len(NAMES)  # the superseded release decoded nothing
        assert newer[-1].details["bots"]["beam"]["settings"]["beam_size"] == 3


def test_rerun_without_a_message_explains(tiny_bots):
    [turn] = run_rerun(tiny_bots, None, None, {})
    assert "Nothing to re-run" in turn.status and turn.histories == [[]] * len(NAMES)


def test_a_reply_record_is_the_replys_json_and_a_score_no_reply_reached_is_none(tiny_bots):
    bot = tiny_bots["beam"]
    reply = bot.respond("hello", prefix="hi hi", no_repeat_ngram=1)  # the prefix repeats a token that is blocked
    assert reply.score == float("-inf")
    done: Future = Future()
    done.set_result(reply)
    record = sbs.reply_record(bot, done)
    assert record == {"bot": "beam", "label": bot.label, **reply.to_json(digits=4)}
    assert record["score"] is None and record["nbest"] == []
    json.dumps(record, allow_nan=False)  # strict JSON
    assert "score -inf" in render.bot_message(record)["content"]


def test_clear_empties_everything(tiny_bots):
    turn = sbs.clear(tiny_bots)
    assert turn.histories == [[]] * len(NAMES) and turn.last_prompt is None and turn.details == {}


# ----------------------------------------------------------------------------- attention


def test_attention_view_of_a_reply(tiny_bots):
    details = run_chat(tiny_bots, "i like pizza and music")[-1].records  # the session state the tab reads
    details = json.loads(json.dumps(details))
    view = attention.attention_view(details, "antilm")
    record = details["bots"]["antilm"]
    ax = view.figure.axes[0]
    assert ax.images[0].get_array().shape == (len(record["tokens"]), len(record["source_tokens"]))
    assert [t for t, _ in view.tokens] == record["tokens"]
    assert all(0.0 <= p <= 1.0 for _, p in view.tokens)
    assert "Beam + anti-LM" in view.caption


def test_attention_view_without_a_reply():
    assert attention.attention_view(None, "beam").figure is None
    assert "Side by side" in attention.attention_view({}, "beam").caption
    view = attention.attention_view({"bots": {"beam": {"error": "<b>bad</b>"}}}, "beam")
    assert view.figure is None and "&lt;b&gt;" in view.caption


# ----------------------------------------------------------------------------- batch compare


def test_batch_compare_table_metrics_and_csv(tiny_bots, tmp_path):
    upload = tmp_path / "prompts.txt"
    upload.write_bytes(b"where do you live?\n\n\xff\xfe bad bytes\nsee you later\n")
    result = run_batch(tiny_bots, "hello there\n   \nhow are you?", upload, out_dir=tmp_path / "out")
    labels = [b.label for b in tiny_bots.values()]
    assert list(result.replies.columns) == ["prompt", *labels]
    assert len(result.replies) == 5  # blank lines skipped, undecodable bytes replaced
    assert list(result.metrics["bot"]) == labels
    for col in batch.METRIC_COLUMNS.values():
        assert pd.api.types.is_numeric_dtype(result.metrics[col])
    assert result.metrics["distinct-1"].between(0, 1).all()
    for label in labels:  # the metrics of core.evaluation.metrics, lengths in words
        row = result.metrics.set_index("bot").loc[label]
        texts = result.replies[label].tolist()
        assert row["mean length (words)"] == round(mean_length(texts), 4)
        assert row["distinct-2"] == round(distinct_n(texts, 2), 4)
    replies_csv, metrics_csv = result.files
    assert pd.read_csv(replies_csv).shape == (5, 5)
    assert pd.read_csv(metrics_csv)["bot"].tolist() == labels
    assert "5 prompts x 4 bots" in result.status


def test_batch_compare_limits_and_empty_input(tiny_bots):
    empty = run_batch(tiny_bots, "  \n\n", None)
    assert "Paste prompts" in empty.status and empty.files == [] and empty.replies.empty
    too_many = run_batch(tiny_bots, "\n".join(f"prompt {i}" for i in range(7)), None, max_prompts=3)
    assert too_many.replies.empty and too_many.files == []
    assert "Too many prompts: 7 prompts; at most 3" in too_many.status
    fits = run_batch(tiny_bots, "prompt a\n\n  \nprompt b\nprompt c", None, max_prompts=3)
    assert fits.replies["prompt"].tolist() == ["prompt a", "prompt b", "prompt c"]  # blank lines do not count


def test_metric_plot():
    metrics = pd.DataFrame({"bot": ["Greedy", "Beam"], "dull rate": [0.5, 0.25]})
    plot = batch.metric_plot(metrics, "dull rate")
    assert plot.to_dict("list") == {"bot": ["Greedy", "Beam"], "value": [0.5, 0.25]}
    assert batch.metric_plot(None, "dull rate").empty and batch.metric_plot(metrics, "nope").empty


# ----------------------------------------------------------------------------- models tab


def test_checkpoint_infos_cover_every_folder_bots_json_names(tiny_checkpoints):
    infos = {i.name: i for i in checkpoint_infos(tiny_checkpoints)}
    assert list(infos) == ["mle", "backward", "lm", "rl"]
    mle = infos["mle"]
    assert "Greedy (model)" in mle.used_by and "Beam + anti-LM (model)" in mle.used_by
    assert infos["lm"].used_by == ["Beam + anti-LM (anti-LM language model)", "RL policy (anti-LM language model)"]
    assert "chitchat" in mle.summary and "parameters" in mle.summary and "MB" in mle.summary
    assert set(mle.loss_curve.columns) == {"step", "series", "value"}
    assert mle.ppl_curve["valid_ppl"].tolist() == [210.5, 151.2]  # rows without validation dropped
    assert mle.card.startswith("# mle") and mle.config["model"]["hidden"] == 32
    assert infos["rl"].loss_curve is None and "no train_log.csv" in infos["rl"].problems[0]
    assert list(read_report(tiny_checkpoints)["bot"]) == NAMES


def test_models_tab_copes_with_missing_and_broken_files(tiny_checkpoints, tmp_path):
    (tmp_path / "bots.json").write_text((tiny_checkpoints / "bots.json").read_text())
    (tmp_path / "mle").mkdir()
    (tmp_path / "mle" / "config.json").write_text("{not json")
    (tmp_path / "mle" / "train_log.csv").write_text("epoch,loss\n0,1.0\n")  # no step column
    infos = {i.name: i for i in checkpoint_infos(tmp_path)}
    assert infos["mle"].config is None and any("not valid JSON" in p for p in infos["mle"].problems)
    assert infos["mle"].loss_curve is None
    assert infos["rl"].config is None and "config.json missing" in infos["rl"].summary
    assert read_report(tmp_path) is None
    assert training_curves(tmp_path / "nope.csv") == (None, None)


def test_rl_logs_plot_their_own_columns(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("step,reward,pg_loss,mle_loss,valid_ppl\n10,0.1,2.0,3.0,\n20,0.3,1.5,2.9,80.5\n")
    loss, ppl = training_curves(log)
    assert sorted(set(loss["series"])) == ["mle_loss", "pg_loss", "reward"]
    assert ppl["valid_ppl"].tolist() == [80.5]
    assert not loss["value"].isna().any()


def test_nbest_table_splits_each_score_into_its_parts(tiny_bots):
    last = run_chat(tiny_bots, "what is your favourite food?", n_bonus=0.2)[-1]
    value = last.nbest[list(tiny_bots).index("antilm")]
    table = pd.DataFrame(value["data"], columns=value["headers"])
    assert list(table.columns) == render.NBEST_COLUMNS and len(table) > 1
    for row in table.itertuples(index=False):
        parts = [getattr(row, p) or 0.0 for p in render.PART_COLUMNS]
        assert sum(parts) == pytest.approx(row.score, abs=1e-3)
        assert row.antilm != 0 and row.bonus > 0  # the anti-LM bot's penalty and the moved length bonus


def test_strategy_switching_controls(tiny_bots):
    """Controls that turn a beam bot into diverse beam search, or the greedy bot into contrastive search."""
    assert controls.overrides_for(tiny_bots["beam"], {"num_groups": 2, "diversity_penalty": 0.5}) == {
        "strategy": "diverse_beam", "num_groups": 2, "diversity_penalty": 0.5}
    assert controls.overrides_for(tiny_bots["greedy"], {"penalty_alpha": 0.6}) == {
        "strategy": "contrastive", "penalty_alpha": 0.6, "top_k": controls.CONTRASTIVE_TOP_K}
    assert controls.overrides_for(tiny_bots["greedy"], {"num_groups": 2}) == {}  # greedy has no beams to group
    last = run_chat(tiny_bots, "hello", num_groups=2, diversity_penalty=1.0, penalty_alpha=0.5)[-1]
    s = {n: r["settings"] for n, r in last.details["bots"].items()}
    assert s["beam"]["strategy"] == "diverse_beam" and s["greedy"]["strategy"] == "contrastive"
    assert "diverse" in last.histories[1][-1]["content"] and "contrastive" in last.histories[0][-1]["content"]


def test_a_column_can_pick_any_decoder_on_its_bot(tiny_bots):
    """Each column's picker puts any strategy on that bot's model; the sliders set the picked strategy."""
    with context(tiny_bots) as ctx:
        turns = list(sbs.chat(ctx, "hello there", [[] for _ in tiny_bots], {"num_groups": 2, "diversity_penalty": 1.0},
                             {"greedy": "diverse_beam", "beam": "contrastive", "rl": ""}))
    s = {n: r["settings"] for n, r in turns[-1].details["bots"].items()}
    assert s["greedy"]["strategy"] == "diverse_beam" and s["greedy"]["num_groups"] == 2  # greedy has no beams itself
    assert s["beam"]["strategy"] == "contrastive" and s["beam"]["top_k"] == controls.CONTRASTIVE_TOP_K
    assert s["rl"]["strategy"] == "diverse_beam"  # "" = its own beam search, switched by the moved groups slider
    assert s["antilm"]["antilm"] == tiny_bots["antilm"].defaults.antilm  # no picker value: untouched
    assert controls.overrides_for(tiny_bots["greedy"], {"antilm": 0.3}, "beam") == {"strategy": "beam"}  # no LM
    assert controls.overrides_for(tiny_bots["beam"], {}, "not-a-strategy") == {}  # an unknown pick is ignored


@pytest.mark.parametrize("value", [
    {"headers": list(render.NBEST_COLUMNS), "data": []},
    render.nbest_table(None),
    {"headers": list(render.NBEST_COLUMNS), "data": [[1, "i like cats", -3.2, -3.0, None, 0.5, None, None, None]]},
    {"headers": ["a", "b"], "data": [[1, 2, 3]]},  # fewer headers than columns: numbered ones added
    {"headers": ["a", "b", "c"], "data": [[1, 2]]},  # more: cut
    {"data": [[1, 2]]},  # none: the component's
])
def test_table_payload_is_what_the_dataframe_component_sends(value):
    import gradio as gr

    from demo_app.tabs.side_by_side import table_payload

    comp = gr.Dataframe(headers=["x", "y"])
    assert table_payload(value, comp.headers) == comp.postprocess(value).model_dump()


def test_models_tab_names_the_encoder_layout(tmp_path):
    from demo_app.model_info import summary_table

    model = {"kind": "seq2seq", "cell": "gru", "enc_layers": 2, "dec_layers": 2, "emb_dim": 256, "hidden": 256,
             "attention": "dot", "vocab_size": 8000}
    summed = summary_table("mle", [], {"model": {**model, "encoder_merge": "sum"}}, tmp_path / "none")
    concat = summary_table("mle", [], {"model": {**model, "encoder_merge": "concat"}}, tmp_path / "none")
    assert "concatenated" in concat and "concatenated" not in summed
    assert "hidden 256, attention dot" in summary_table("mle", [], {"model": model}, tmp_path / "none")  # old configs


def test_streamed_updates_send_each_reply_once_in_the_details(tiny_bots):
    """Gradio sends a streamed update as a diff of the previous one: the details JSON of the side-by-side tab must
    reach the diff as plain data, so each update adds only the bots that just answered (a model object would be
    replaced whole each time, every earlier reply sent again)."""
    import gradio as gr
    from gradio.utils import diff

    from demo_app.tabs.side_by_side import _Serializer

    n = len(tiny_bots)
    components = [gr.Textbox(), gr.State(), *[gr.Chatbot() for _ in range(n)],
                  *[gr.Dataframe(headers=list(render.NBEST_COLUMNS)) for _ in range(n)], gr.JSON(), gr.Markdown(),
                  gr.State()]
    at = 2 + 2 * n  # the details output
    send = _Serializer(components)
    sent = [send(turn)[at] for turn in run_chat(tiny_bots, "do you like cats?")]
    assert len(sent) >= 2 and all(isinstance(d, dict) for d in sent)
    assert sent[-1]["bots"].keys() == tiny_bots.keys()
    for before, after in zip(sent, sent[1:]):
        edits = diff(before, after)
        assert edits and all(e[0] == "add" and e[1][0] == "bots" and len(e[1]) == 2 for e in edits), edits
        assert sorted(e[1][1] for e in edits) == sorted(after["bots"].keys() - before["bots"].keys())
