"""The MCP ``reply`` tool: a Blocks with ``add_mcp_tools`` launched with ``mcp_server=True``, listed and called
over MCP's streamable HTTP endpoint with the ``mcp`` client.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_mcp.py
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pytest
from helpers import free_port
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from demo_app.context import AppContext
from demo_app.mcp import add_mcp_tools, make_reply_tool


@pytest.fixture(scope="module")
def ctx(tiny_ctx) -> AppContext:
    return tiny_ctx  # tests/conftest.py: the tiny bots and their scheduler


@pytest.fixture(scope="module")
def mcp_url(ctx) -> Iterator[str]:
    with gr.Blocks() as demo:
        gr.Markdown("Seq2Seq Chatbot Arena")
        add_mcp_tools(ctx)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                mcp_server=True)
    try:
        yield f"{demo.local_url}gradio_api/mcp/"
    finally:
        demo.close()


def over_mcp(url: str, *calls: tuple[str, dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """(the listed tools, the result of each (tool, arguments) call), in one MCP session."""

    async def run() -> tuple[list[Any], list[Any]]:
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            return tools, [await session.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def test_reply_tool_is_listed_with_the_bots_in_its_description(mcp_url, tiny_bots):
    tools, _ = over_mcp(mcp_url)
    [tool] = [t for t in tools if t.name == "reply"]
    for name, bot in tiny_bots.items():
        assert f"{name} ({bot.label}): {bot.description}" in tool.description
    props = tool.inputSchema["properties"]
    assert set(props) == {"bot", "message", "settings", "history"}
    assert tool.inputSchema["required"] == ["bot", "message"]
    assert ", ".join(tiny_bots) in props["bot"]["description"]
    assert "beam_size" in props["settings"]["description"]
    assert "oldest first" in props["history"]["description"] and "64" in props["history"]["description"]
    assert "no memory" not in tool.description and "history" in tool.description


def test_reply_tool_answers_and_refuses_bad_input_clearly(mcp_url, tiny_bots):
    _, (ok, unknown, bad) = over_mcp(
        mcp_url,
        ("reply", {"bot": "beam", "message": "hi there", "settings": {"beam_size": 3}}),
        ("reply", {"bot": "nope", "message": "hi"}),
        ("reply", {"bot": "beam", "message": "hi", "settings": {"beam_size": 99}}),
    )
    assert not ok.isError
    body = json.loads(ok.content[0].text)
    expected = tiny_bots["beam"].respond("hi there", beam_size=3)
    assert body["text"] == expected.text and body["settings"]["beam_size"] == 3
    assert [h["text"] for h in body["nbest"]] == [h.text for h in expected.nbest]
    assert unknown.isError and "unknown bot 'nope'" in unknown.content[0].text
    assert bad.isError and "settings.beam_size=99" in bad.content[0].text and "[1, 50]" in bad.content[0].text


def test_reply_tool_reads_the_history(mcp_url, tiny_bots):
    history = ["where are you from?", "paris"]
    _, (with_history, alone, bad_turn, bad_shape, too_long) = over_mcp(
        mcp_url,
        ("reply", {"bot": "greedy", "message": "do you have any pets?", "history": history}),
        ("reply", {"bot": "greedy", "message": "do you have any pets?", "history": []}),
        ("reply", {"bot": "greedy", "message": "hi", "history": ["ok", 3]}),
        ("reply", {"bot": "greedy", "message": "hi", "history": "hello"}),
        ("reply", {"bot": "greedy", "message": "hi", "history": ["ok"] * 65}),
    )
    bot = tiny_bots["greedy"]
    assert not with_history.isError and not alone.isError
    assert json.loads(with_history.content[0].text)["text"] == bot.respond("do you have any pets?",
                                                                            history=history).text
    assert json.loads(alone.content[0].text)["text"] == bot.respond("do you have any pets?").text
    # the MCP server checks the tool's input schema first (its own wording); the tool checks the limits
    assert bad_turn.isError and "3 is not of type 'string'" in bad_turn.content[0].text
    assert bad_shape.isError and "'hello' is not valid" in bad_shape.content[0].text
    assert too_long.isError and "history has 65 turns; at most 64" in too_long.content[0].text


def test_reply_function_is_plain(ctx, tiny_bots):
    reply = make_reply_tool(ctx)
    assert json.loads(reply("greedy", "hi there"))["text"] == tiny_bots["greedy"].respond("hi there").text
    with pytest.raises(gr.Error, match="empty"):
        reply("greedy", "   ")
    with pytest.raises(gr.Error, match="unknown decoding setting"):
        reply("greedy", "hi", {"beam_sizee": 2})
    history = ["i love dogs", "me too"]
    assert json.loads(reply("rl", "what about cats?", None, history))["text"] == \
        tiny_bots["rl"].respond("what about cats?", history=history).text
    with pytest.raises(gr.Error, match=r"history\[0\] must be a string"):
        reply("greedy", "hi", None, [None])
    with pytest.raises(gr.Error, match=r"history\[0\] has 4001 characters"):
        reply("greedy", "hi", None, ["a" * 4001])
    with pytest.raises(gr.Error, match="history must be a list"):
        reply("greedy", "hi", None, "hello")


# settings under which the tiny beam bot has no reply at all: the forced start "hi hi" repeats a token that
# no_repeat_ngram=1 blocks, so every continuation is blocked and the score is -inf
BLOCKED = {"prefix": "hi hi", "no_repeat_ngram": 1}


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON: Infinity, -Infinity and NaN are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_reply_tool_answers_strict_json_with_null_for_a_score_no_reply_reached(mcp_url, tiny_bots):
    assert tiny_bots["beam"].respond("hello", **BLOCKED).score == float("-inf")
    _, (blocked,) = over_mcp(mcp_url, ("reply", {"bot": "beam", "message": "hello", "settings": BLOCKED}))
    assert not blocked.isError, blocked.content[0].text
    body = strict_json(blocked.content[0].text)
    assert body["score"] is None and body["text"] == "" and body["nbest"] == []
    assert body["settings"]["prefix"] == "hi hi"
