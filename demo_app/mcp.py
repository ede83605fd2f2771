"""The MCP ``reply`` tool: an agent asks one of the bots for a reply (Gradio 6's MCP server).

    with gr.Blocks() as demo:
        ...                                   # the tabs
        add_mcp_tools(ctx)                    # inside the Blocks context
    demo.launch(mcp_server=True)              # chatbot-arena serve --mcp
    # MCP (streamable HTTP): http://127.0.0.1:7860/gradio_api/mcp/

Gradio turns the function into a tool: its name is the tool's, its docstring (written here from ``ctx.bots``, so
the agent reads what each bot is) the tool's description, its type hints the input schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import gradio as gr

from core.context import MAX_HISTORY_TURNS, MAX_TURN_CHARS, check_history
from core.decoding import Reply
from core.serving import Busy
from demo_app.context import AppContext

TIMEOUT_S = 60.0
SETTINGS_HELP = ("optional decoder settings overriding the bot's, e.g. "
                 '{"beam_size": 5, "antilm": 0.3, "n_bonus": 0.1}; GET /api/v1/bots lists them with their ranges')
HISTORY_HELP = ("optional conversation before the message, oldest first, your turns and the bot's earlier replies "
                f'alternating, e.g. ["want to go hiking?", "no"]; at most {MAX_HISTORY_TURNS} turns of at most '
                f"{MAX_TURN_CHARS} characters; a bot reads only the last few (its context_turns)")


def tool_docstring(ctx: AppContext) -> str:
    """The ``reply`` tool's description: what the bots are, one line each, and the arguments."""
    bots = "\n".join(f"- {name} ({bot.label}): {bot.description}" for name, bot in ctx.bots.items())
    first = next(iter(ctx.bots), "")
    return f"""Get a reply to a message from one of this server's chatbots: small GRU seq2seq models trained on
casual English chit-chat (short turns such as "hi, how are you today?"), each decoded a different way. Use it to
compare how decoding changes a reply. They know no facts and remember nothing between calls: to continue a
conversation, send the turns so far as history (a bot reads the last few).

Bots:
{bots}

Args:
    bot: which bot answers, one of: {", ".join(ctx.bots)} (e.g. "{first}")
    message: the message to answer, in English, ideally one short casual sentence
    settings: {SETTINGS_HELP}
    history: {HISTORY_HELP}

Returns:
    JSON with the reply text, its search score (null when no reply was possible under these settings), the
    n-best alternatives and the settings used
"""


def make_reply_tool(ctx: AppContext) -> Callable[..., str]:
    """The plain ``reply(bot, message, settings, history) -> JSON text`` behind the tool; bad input raises
    ``gr.Error``."""

    def reply(bot: str, message: str, settings: dict | None = None, history: list[str] | None = None) -> str:
        if bot not in ctx.bots:
            raise gr.Error(f"unknown bot {str(bot)[:100]!r}; choose one of {list(ctx.bots)}")
        if settings is not None and not isinstance(settings, dict):
            raise gr.Error("settings must be an object of decoder settings, e.g. {\"beam_size\": 5}")
        try:
            turns = check_history(history)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        try:
            r = ctx.scheduler.respond(bot, message, dict(settings or {}), history=turns or None, timeout=TIMEOUT_S)
        except ValueError as e:
            raise gr.Error(str(e).replace("DecodeConfig.", "settings.")) from e
        except Busy as e:
            raise gr.Error("the server is busy; try again in a second") from e
        return tool_answer(bot, r)

    reply.__doc__ = tool_docstring(ctx)
    return reply


def tool_answer(bot: str, reply: Reply) -> str:
    """The tool's answer, strict JSON (no Infinity or NaN): the bot, the reply text, its score, the n-best texts and
    scores and the settings, as :meth:`Reply.to_json` writes them (a score no reply could reach is null)."""
    data = reply.to_json()
    return json.dumps({"bot": bot, "text": data["text"], "score": data["score"],
                       "nbest": [{"text": h["text"], "score": h["score"]} for h in data["nbest"]],
                       "settings": data["settings"]}, ensure_ascii=False, allow_nan=False)


def add_mcp_tools(ctx: AppContext) -> None:
    """Register the ``reply`` tool on the Blocks being built (call inside ``with gr.Blocks():``)."""
    gr.api(make_reply_tool(ctx), api_name="reply")
