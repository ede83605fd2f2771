"""The launched app driven over HTTP by gradio_client, as an API user would (tiny checkpoints of conftest.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

REPO = Path(__file__).resolve().parent.parent

NAMES = ["greedy", "beam", "antilm", "rl"]


@pytest.fixture(scope="module")
def client(launched_app, tmp_path_factory):
    return Client(launched_app, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def unpack(out):
    """/chat and /rerun outputs: message box, 4 histories, 4 n-best tables, details JSON, status."""
    return {"message": out[0], "histories": out[1:5], "nbest": out[5:9], "details": out[9], "status": out[10]}


def text_of(message):
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_the_api_names_its_endpoints_and_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/chat", "/rerun", "/attention", "/batch"} <= set(api)
    params = [p["parameter_name"] for p in api["/chat"]["parameters"]]
    assert params[:2] == ["message", "greedy_history"] and "beam_size" in params and "antilm" in params


def test_chat_gives_four_replies_and_sliders_change_the_beam_bot(client):
    first = unpack(client.predict(message="hello there, how are you?", api_name="/chat"))
    assert first["message"] == "" and "All 4 replies" in first["status"]
    for name, history in zip(NAMES, first["histories"]):
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert text_of(history[1]).strip()
        assert first["details"]["bots"][name]["text"].strip()
    assert first["details"]["bots"]["beam"]["settings"]["beam_size"] == 10

    moved = unpack(client.predict(message="hello there, how are you?", beam_size=3, n_bonus=0.5,
                                  api_name="/chat"))
    beam = moved["details"]["bots"]["beam"]
    assert beam["settings"]["beam_size"] == 3 and beam["settings"]["n_bonus"] == 0.5
    assert len(moved["nbest"][1]["data"]) == 3  # n-best follows a smaller beam
    assert moved["details"]["bots"]["greedy"]["settings"]["strategy"] == "greedy"


def test_rerun_answers_the_last_message_again_with_new_settings(client):
    first = unpack(client.predict(message="do you have any pets?", api_name="/chat"))
    client.predict(message="   ", api_name="/chat")  # an empty send in between changes nothing
    again = unpack(client.predict(*first["histories"], beam_size=2, antilm=0.0, api_name="/rerun"))
    assert again["details"]["prompt"] == "do you have any pets?"  # from this session's state
    assert again["details"]["bots"]["beam"]["settings"]["beam_size"] == 2
    assert again["details"]["bots"]["antilm"]["settings"]["antilm"] == 0.0
    assert [len(h) for h in again["histories"]] == [2, 2, 2, 2]  # replaced, not appended


@pytest.mark.parametrize("values, message", [
    ({"beam_size": 35}, "Value 35 is greater than maximum value 20"),
    ({"antilm": -1}, "less than minimum"),
    ({"max_len": 10_000}, "greater than maximum"),
    ({"beam_size": "many"}, "slider"),
    ({"beam_size": None}, "slider"),
    ({"greedy_history": "not a list"}, "validation error"),
    ({"greedy_history": [{"x": 1}]}, "validation error"),
])
def test_bad_values_get_gradios_message_and_the_app_keeps_serving(client, values, message):
    """Gradio checks every input against its component before the callback runs, and says what is wrong."""
    with pytest.raises(AppError, match=message):
        client.predict(message="hi", api_name="/chat", **values)
    assert "All 4 replies" in unpack(client.predict(message="hi", api_name="/chat"))["status"]


def test_in_range_oddities_are_rounded_and_reported(client):
    out = unpack(client.predict(message="hi", beam_size=2.6, api_name="/chat"))
    assert out["details"]["bots"]["beam"]["settings"]["beam_size"] == 3
    assert "rounded to 3" in out["status"]


@pytest.mark.parametrize("message, expect", [
    ("", "Type a message first"),
    ("   \t\n  ", "Type a message first"),
    ("\x00\x01\x02", "Type a message first"),
    ("x" * 100_000, "Long message (100,000 characters)"),
    ("emoji 😀🎉👍🏽 and zero\u200bwidth", "All 4 replies"),
    ("bell\x07 escape\x1b[31m null\x00 end", "All 4 replies"),
])
def test_robust_to_odd_messages(client, message, expect):
    out = unpack(client.predict(message=message, api_name="/chat"))
    assert expect in out["status"]


def test_markup_comes_back_escaped(client):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    out = unpack(client.predict(message=evil, api_name="/chat"))
    shown = text_of(out["histories"][0][0])
    assert "<script" not in shown and "&lt;script&gt;" in shown
    assert out["details"]["prompt"] == evil


def test_attention_and_batch_endpoints(client):
    details = unpack(client.predict(message="where do you live?", api_name="/chat"))["details"]
    plot, tokens, caption = client.predict("beam", api_name="/attention")  # this session's last turn
    assert plot and "image/png" in str(plot)
    assert len(tokens) == len(details["bots"]["beam"]["tokens"])
    assert "Beam search" in caption

    replies, metrics, _plot, files, status = client.predict("hello\nsee you later\n\nwhat is up?", None,
                                                            "dull rate", api_name="/batch")
    assert replies["headers"][0] == "prompt" and len(replies["data"]) == 3
    assert [row[0] for row in metrics["data"]] == ["Greedy", "Beam search (K=10)", "Beam + anti-LM", "RL policy"]
    assert len(files) == 2 and "3 prompts x 4 bots" in status


def test_serve_command_and_core_without_gradio():
    code = ("import sys, core, core.cli, core.bots, core.decoding, core.evaluation.metrics; core.cli.build_parser(); "
            "assert not [m for m in sys.modules if m.startswith('gradio')], 'core imported gradio'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    out = subprocess.run([sys.executable, "-m", "core.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--host", "--port", "--device", "--checkpoints", "--data-dir", "--db", "--no-batching", "--mcp",
                 "examples:"):
        assert flag in out


def test_chat_outputs_are_in_the_form_gradio_sends_them(client):
    """The side-by-side events postprocess their outputs themselves (postprocess=False): what arrives must be what
    each component's own postprocess gives, i.e. what the page renders."""
    import gradio as gr

    out = unpack(client.predict(message="do you like cats?", api_name="/chat"))
    history = out["histories"][1]
    raw = [{"role": m["role"], "content": text_of(m)} for m in history]
    assert history == gr.Chatbot().postprocess(raw).model_dump()
    assert all(isinstance(m["content"], list) and m["content"][0]["type"] == "text" for m in history)
    table = out["nbest"][1]
    assert table["headers"][:3] == ["rank", "reply", "score"] and len(table["data"]) >= 1
    assert table == gr.Dataframe(headers=table["headers"]).postprocess(
        {"headers": table["headers"], "data": table["data"]}).model_dump()


def test_the_event_queue_looks_for_work_every_few_milliseconds_not_every_one(tiny_ctx):
    """Gradio's queue polls for new events while it has none; the app sets the interval (1 ms in Gradio: ~9% of a
    core at idle). The attribute must still be the one Gradio's queue loop reads, or the setting does nothing."""
    import inspect

    import gradio.queueing

    from demo_app.app import QUEUE_POLL_S, build_app

    demo = build_app(tiny_ctx)
    assert demo._queue.sleep_when_free == QUEUE_POLL_S > 0.001
    assert "self.sleep_when_free" in inspect.getsource(gradio.queueing.Queue.start_processing)


def test_the_reply_prefix_is_a_chat_parameter(client):
    out = unpack(client.predict(message="what do you do for fun?", prefix="i like", api_name="/chat"))
    assert all(r["text"].startswith("i like") for r in out["details"]["bots"].values())
    bad = unpack(client.predict(message="hi", prefix="word " * 40, api_name="/chat"))  # each column says why
    assert all("longer than max_len" in r["error"] for r in bad["details"]["bots"].values())


def test_a_traced_search_branches_over_the_api(client):
    """/search keeps the traced search in the client's session; /search_branch reruns it from a node of its
    trace, /search_branch_token from a token of its token view; a stale request gets a message."""
    _tree, _baseline, table, status = client.predict(bot="antilm", message="do you like cats?", api_name="/search")
    assert "candidates in" in status
    pruned = next(row for row in table["data"] if row[4] == "pruned")
    status, parts, _tree = client.predict(bot="antilm", message="do you like cats?", node=pruned[1],
                                          api_name="/search_branch")
    assert status.startswith(f"**Branch from node {pruned[1]}") and parts["data"][-1][0] == "score"
    status, _, _ = client.predict(bot="antilm", message="do you like cats?", step=0, token=10**7,
                                  api_name="/search_branch_token")  # no such token in the token view
    assert "Pick one of the tokens listed for step 0" in status
    stale, _, _ = client.predict(bot="antilm", message="another message", node=pruned[1], api_name="/search_branch")
    assert "changed since the search was traced" in stale
