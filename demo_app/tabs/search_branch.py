"""The Search tab's "what if it had said ...?" part: branch the traced search from any node, and the token view.

After a search is traced (:func:`demo_app.tabs.search.run_search`), the tab keeps it as a :class:`TracedSearch`
(session state). A visitor then

- picks a node of the trace (its id, or a click on its row of the trace table), kept or pruned, and sees the search
  run again with that node's token path forced as the reply's start: the new best reply beside the original and the
  score difference split into its parts (:func:`branch_from_node`, over :func:`core.branching.branch`);
- reads the token view: for each step of the reply, the ten tokens the model found most likely, with their
  probabilities and, for an anti-LM decoder, the anti-LM modifier's score of each (:func:`token_table`); picking one
  (its id, or a click on its row) branches with the reply's tokens before that step and the picked token
  (:func:`branch_from_token`).

Every search (the traced one when it is not given, each branch) goes through the batching scheduler,
``ctx.scheduler``, as every decode of the app does; the token view is no search (a teacher-forced pass over the
reply) and runs here. Every callback is a plain function of plain values that never raises: no traced search, no
node chosen, a node or token that is not in the trace, a trace made for another message or other settings (stale),
a busy server or a reply that takes too long each get a message.

    >>> traced = traced_search(ctx, "antilm", "how are you?", search.BOT_SETTINGS, {}, [], "")
    >>> view = branch_from_node(ctx, traced, 12, traced.key)
    >>> view.status, view.parts                    # Markdown, and a DataFrame: part, original, branch, difference
"""

from __future__ import annotations

import html
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.bots import Bot
from core.branching import Branch, TokenChoice, TokenStep, branch, node_path, token_view
from core.decoding import Reply, describe_settings
from core.tokenizer import EOS_ID
from demo_app.context import AppContext
from demo_app.scheduled import problem, responder
from demo_app.tabs.search import control_values, history_lines, request_overrides, tree_figure

PART_COLUMNS = ["part", "original", "branch", "difference"]
TOKEN_COLUMNS = ["rank", "token", "id", "p", "log p", "LM log p", "anti-LM score", "reply"]
NO_TRACE = "Trace a search first (**Trace the search** above); then pick a node or a token to branch from."
STALE = ("The message, conversation, bot or decoder settings changed since the search was traced: press **Trace "
         "the search** again, then branch.")


@dataclass
class TracedSearch:
    """The last search traced in a session: what it was asked (``key``) and what it gave."""

    key: tuple  # (bot, message, history, overrides): see request_key
    bot_name: str
    message: str
    history: list[str]
    overrides: dict[str, Any]
    reply: Reply
    steps: list[TokenStep] = field(default_factory=list)  # the token view of the reply


@dataclass
class BranchView:
    status: str  # Markdown: the forced start, both replies and scores, the difference in parts
    parts: pd.DataFrame  # PART_COLUMNS, one row per score part, then the score
    figure: go.Figure  # the branch's search tree


def request_key(bots: Mapping[str, Bot], bot_name: Any, message: Any, strategy: Any,
                values: Mapping[str, Any], history: Sequence[str], prefix: Any) -> tuple | None:
    """What a search request asks, comparable with a :class:`TracedSearch`'s ``key``: bot, message, earlier turns
    and the overrides the controls mean (so a control the chosen decoder ignores changes nothing); None for a
    request that cannot be decoded (unknown bot or strategy)."""
    if bot_name not in bots or not isinstance(message, str):
        return None
    try:
        overrides = request_overrides(bots[bot_name], strategy, values, prefix)
    except ValueError:
        return None
    return bot_name, message, tuple(history), tuple(sorted(overrides.items()))


def traced_search(ctx: AppContext, bot_name: str, message: str, strategy: str,
                  values: Mapping[str, Any], history: Sequence[str], prefix: Any = "",
                  reply: Reply | None = None) -> TracedSearch | None:
    """The state kept after a search: its request and its traced reply (``reply``; decoded through the scheduler
    when not given), with the reply's token view. None when the request cannot be decoded (its message is the
    search's status)."""
    key = request_key(ctx.bots, bot_name, message, strategy, values, history, prefix)
    if key is None:
        return None
    bot, overrides = ctx.bots[bot_name], dict(key[3])
    try:
        if reply is None:
            reply = responder(ctx, bot_name)(message, history=list(history), trace=True, **overrides)
        # not a decode: a teacher-forced pass over the reply, in this process (core.branching.token_view)
        steps = token_view(bot, message, reply.tokens, history=list(history), overrides=overrides)
    except Exception as e:  # noqa: BLE001 - a bad request, a busy server, a slow decode: no state to branch from
        problem(e)  # logs what is not a bad request, a busy server or a timeout
        return None
    return TracedSearch(key, bot_name, message, list(history), overrides, reply, steps)


# ----------------------------------------------------------------------------- branching


def _empty_parts() -> pd.DataFrame:
    return pd.DataFrame(columns=PART_COLUMNS)


def _problem(text: str) -> BranchView:
    return BranchView(f"⚠ {text}", _empty_parts(), tree_figure(None))


def _cell(text: str) -> str:
    """A reply as a Markdown table cell: escaped, no column breaks, shown as '(empty reply)' when empty."""
    return html.escape(text).replace("|", "&#124;") if text else "(empty reply)"


def _shown_path(bot: Bot, path: Sequence[int]) -> str:
    """A token path as text, '</s>' where it ends the reply."""
    text = bot.tokenizer.decode([t for t in path if t != EOS_ID])
    return text + (" </s>" if path and path[-1] == EOS_ID else "")


def parts_table(result: Branch) -> pd.DataFrame:
    """Both replies' score parts, rounded, and the branch's change of each; the last row is the score (the parts
    add up to it)."""
    rows = [[d.part, d.original, d.branch, d.difference] for d in result.parts]
    rows.append(["score", result.original.score, result.branch.score, result.score_difference])
    return pd.DataFrame([[name, *(round(x, 3) if math.isfinite(x) else x for x in nums)] for name, *nums in rows],
                        columns=PART_COLUMNS)


def _branch_status(bot: Bot, result: Branch, what: str) -> str:
    changed = " · ".join(f"{d.part} {d.difference:+.3f}" for d in result.parts if abs(d.difference) >= 5e-4)
    return (f"**Branch from {what}**, forced start *{_cell(_shown_path(bot, result.path))}* "
            f"({len(result.path)} tokens), then {html.escape(describe_settings(result.branch.settings))}.\n\n"
            "| | reply | score |\n|---|---|---|\n"
            f"| original | {_cell(result.original.text)} | {result.original.score:.3f} |\n"
            f"| branch | {_cell(result.branch.text)} | {result.branch.score:.3f} |\n\n"
            f"Score difference {result.score_difference:+.3f} = {changed or 'no part changed'}.")


def _check(bots: Mapping[str, Bot], traced: Any, current: tuple | None) -> str | None:
    """Why no branch can be made from ``traced`` for the request ``current`` (None: it can)."""
    if not isinstance(traced, TracedSearch) or traced.bot_name not in bots:
        return NO_TRACE
    if current != traced.key:
        return STALE
    return None


def _branch_view(ctx: AppContext, traced: TracedSearch, path: list[int], what: str) -> BranchView:
    """The search forced to start with ``path``, through the scheduler, beside the traced one."""
    bot = ctx.bots[traced.bot_name]
    try:
        result = branch(bot, traced.message, path, history=traced.history, overrides=traced.overrides,
                        original=traced.reply, respond=responder(ctx, traced.bot_name))
    except Exception as e:  # noqa: BLE001 - a path that cannot be said, a busy server, a slow decode: a message
        return _problem(html.escape(problem(e)))
    figure = tree_figure(result.branch, f"branch: {_shown_path(bot, path)} …")
    return BranchView(_branch_status(bot, result, what), parts_table(result), figure)


def branch_from_node(ctx: AppContext, traced: Any, node: Any, current: tuple | None) -> BranchView:
    """Branch the traced search from trace node ``node`` (an id of the trace table); ``current``: the
    :func:`request_key` of what the tab's inputs ask now (a trace made for other inputs is stale). Never raises."""
    why = _check(ctx.bots, traced, current)
    if why:
        return _problem(why)
    if node is None or (isinstance(node, float) and math.isnan(node)):
        return _problem("Pick a node first: type its id (the trace table's **id** column) or click its row.")
    try:
        path = node_path(traced.reply.trace, node)
    except ValueError as e:
        return _problem(html.escape(str(e)) + ".")
    row = next(x for x in traced.reply.trace if x["id"] == int(float(node)))
    what = f"node {row['id']} (step {row['step']}, {row['status']} {html.escape(repr(row['text']))})"
    return _branch_view(ctx, traced, path, what)


# ----------------------------------------------------------------------------- token view


def step_choices(traced: Any) -> list[tuple[str, int]]:
    """The token view's step picker: (label, step) for each step of the traced reply, the label its token, its
    probability and its rank under the model."""
    if not isinstance(traced, TracedSearch):
        return []
    return [(f"step {s.step}: {s.chosen.piece!r} (p {s.chosen.p:.3f}, rank {s.chosen.rank})", s.step)
            for s in traced.steps]


def _row(c: TokenChoice, reply_token: int, anti: bool) -> list[Any]:
    mark = "✓" if c.token == reply_token else ""
    row = [c.rank, repr(c.piece), c.token, round(c.p, 4), round(c.logp, 3)]
    if anti:
        row += [round(c.lm_logp, 3), round(c.penalised, 3) if c.penalty_applies else f"{c.penalised:.3f} (no penalty)"]
    return [*row, mark]


def token_table(traced: Any, step: Any) -> pd.DataFrame:
    """The token view of one step of the traced reply: its ten most likely next tokens (rank, piece, id,
    probability, log p; with the anti-LM on, the LM's log p and the anti-LM modifier's score), the reply's own
    token marked, and listed after them when it is not among them. Empty for no trace or no such step."""
    steps = traced.steps if isinstance(traced, TracedSearch) else []
    anti = any(c.lm_logp is not None for s in steps for c in s.top)
    columns = TOKEN_COLUMNS if anti else [c for c in TOKEN_COLUMNS if c not in ("LM log p", "anti-LM score")]
    s = _step(traced, step)
    if s is None:
        return pd.DataFrame(columns=columns)
    choices = s.top + ([s.chosen] if all(c.token != s.chosen.token for c in s.top) else [])
    return pd.DataFrame([_row(c, s.chosen.token, anti) for c in choices], columns=columns)


def _step(traced: Any, step: Any) -> TokenStep | None:
    if not isinstance(traced, TracedSearch):
        return None
    try:
        return next(s for s in traced.steps if s.step == int(step))
    except (TypeError, ValueError, StopIteration):
        return None


def branch_from_token(ctx: AppContext, traced: Any, step: Any, token: Any,
                      current: tuple | None) -> BranchView:
    """Branch the traced search with the reply's tokens before ``step`` and then ``token`` (an id listed in the
    token view of that step); ``current`` as in :func:`branch_from_node`. Never raises."""
    why = _check(ctx.bots, traced, current)
    if why:
        return _problem(why)
    s = _step(traced, step)
    if s is None:
        return _problem("Pick a step of the reply first (the token view's **Step**).")
    listed = {c.token: c for c in [*s.top, s.chosen]}
    try:
        picked = listed.get(int(token)) if float(token).is_integer() else None
    except (TypeError, ValueError, OverflowError):
        picked = None
    if picked is None:
        return _problem(f"Pick one of the tokens listed for step {s.step}: type its **id** or click its row "
                        f"(not {html.escape(repr(token))}).")
    what = f"step {s.step} with {html.escape(repr(picked.piece))} (rank {picked.rank}, p {picked.p:.3f})"
    return _branch_view(ctx, traced, [*s.path, picked.token], what)


# ----------------------------------------------------------------------------- the tab's part


def named(fn: Any, names: Sequence[str]) -> None:
    """Give a ``*args`` callback named parameters, so that the Gradio API lists them by name."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])


def build(ctx: AppContext, request: list[Any], control_names: Sequence[str], traced: Any,
          search_event: Any, trace_table: Any) -> None:
    """The branch and token-view components under the Search tab's trace table, and their events. ``request``:
    the tab's inputs (bot, message, strategy, history, prefix, then the controls named ``control_names``);
    ``traced``: the session's TracedSearch state; ``search_event``: the search's click event (the token view
    follows it); ``trace_table``: a click on one of its rows branches from that node."""
    import gradio as gr

    with gr.Column(elem_id="search-branch"):
        _components(gr, ctx, request, control_names, traced, search_event, trace_table)


def _components(gr: Any, ctx: AppContext, request: list[Any], control_names: Sequence[str], traced: Any,
                search_event: Any, trace_table: Any) -> None:
    """The body of :func:`build` (inside its column)."""
    gr.Markdown("### What if it had said something else?\nPick a node of the trace (type its **id**, or click its "
                "row in the table above), kept or pruned, and the search runs again with the reply forced to start "
                "with that node's tokens: the new best reply beside the original, and the score difference split "
                "into its parts. A beam search rerun keeps all its K beams under the node, so it can end "
                "elsewhere than the original did (even from a node on the original's path).")
    with gr.Row():
        node = gr.Number(label="Node id (the trace table's id column)", precision=0, elem_id="search-branch-node")
        node_run = gr.Button("Branch from this node", elem_id="search-branch-run")
    status = gr.Markdown(NO_TRACE, elem_id="search-branch-status")
    with gr.Row():
        parts = gr.Dataframe(_empty_parts(), label="Score parts: original, branch and difference",
                             elem_id="search-branch-parts", interactive=False)
        tree = gr.Plot(label="The branch's search tree", elem_id="search-branch-tree")
    gr.Markdown("### Token view\nFor each step of the reply: the ten tokens the model finds most likely there, "
                "with their probabilities (and, for an anti-LM decoder, the language model's log p and the anti-LM "
                "score the search ranked them by). Pick a token (type its **id**, or click its row) to branch: the "
                "reply's tokens before the step, then that token.")
    with gr.Row():
        step = gr.Dropdown([], label="Step", elem_id="search-token-step", scale=2,
                           allow_custom_value=True)  # an API caller may name a step: branch_from_token checks it
        token = gr.Number(label="Token id (the table's id column)", precision=0, elem_id="search-token-id")
        token_run = gr.Button("Branch with this token", elem_id="search-token-run")
    tokens = gr.Dataframe(token_table(None, None), label="Top tokens at this step", interactive=False,
                          elem_id="search-token-table")
    outputs = [status, parts, tree]
    n = len(control_names)

    def current(bot_name: str, msg: str, strat: str, earlier: str, prefix: str, *args: Any) -> tuple | None:
        return request_key(ctx.bots, bot_name, msg, strat, control_values(control_names, args[:n]),
                           history_lines(earlier), prefix)

    def on_node(*args: Any) -> tuple[Any, ...]:
        *req, state, picked = args
        view = branch_from_node(ctx, state, picked, current(*req))
        return view.status, view.parts, view.figure

    def on_token(*args: Any) -> tuple[Any, ...]:
        *req, state, at, picked = args
        view = branch_from_token(ctx, state, at, picked, current(*req))
        return view.status, view.parts, view.figure

    def on_traced(state: Any) -> tuple[Any, ...]:
        choices = step_choices(state)
        first = choices[0][1] if choices else None
        return (gr.update(choices=choices, value=first), token_table(state, first),
                NO_TRACE if state is None else "Pick a node or a token to branch from.", _empty_parts(),
                tree_figure(None), None, None)

    def pick_node(evt: gr.SelectData) -> Any:
        row = evt.row_value or []
        return row[1] if len(row) > 1 else None  # the id column of TABLE_COLUMNS

    def pick_token(evt: gr.SelectData) -> Any:
        row = evt.row_value or []
        return row[2] if len(row) > 2 else None  # the id column of TOKEN_COLUMNS

    for fn in (pick_node, pick_token):  # Gradio reads the hints; postponed ones would name this function's gr
        fn.__annotations__ = {"evt": gr.SelectData, "return": Any}

    request_names = ["bot", "message", "strategy", "history", "prefix", *control_names]
    named(on_node, [*request_names, "traced", "node"])  # the API's names: predict(message=..., node=12)
    named(on_token, [*request_names, "traced", "step", "token"])  # (the session state is no API parameter)
    search_event.then(on_traced, [traced], [step, tokens, status, parts, tree, node, token],
                      api_visibility="undocumented")
    node_run.click(on_node, [*request, traced, node], outputs, api_name="search_branch", concurrency_id="models")
    trace_table.select(pick_node, None, [node], api_visibility="undocumented").then(
        on_node, [*request, traced, node], outputs, api_visibility="undocumented", concurrency_id="models")
    step.input(lambda state, at: (token_table(state, at), None), [traced, step], [tokens, token],
               api_visibility="undocumented")
    token_run.click(on_token, [*request, traced, step, token], outputs, api_name="search_branch_token",
                    concurrency_id="models")
    tokens.select(pick_token, None, [token], api_visibility="undocumented").then(
        on_token, [*request, traced, step, token], outputs, api_visibility="undocumented", concurrency_id="models")
