"""Side by side: one message, every bot of the registry in its own column (each column its own conversation, which
its bot reads), decoder controls that act live."""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr
import pydantic

from demo_app import callbacks as cb
from demo_app.context import AppContext

TITLE = "Side by side"
ID = "chat"
EXAMPLES = ["hi, how are you today?", "what do you do for fun?", "where are you from?", "do you have any pets?",
            "i just got back from a trip to paris", "what is your favourite movie?"]
MODELS = "models"  # concurrency id of every event that decodes; the scheduler decides how many decode at once


def build(ctx: AppContext, shared: dict[str, Any], tab: gr.Tab) -> None:
    bots = ctx.bots
    n = len(bots)
    ui = _layout(ctx)
    shared["records"] = ui["records"]
    shared["examples"] = EXAMPLES
    outputs = [ui["message"], ui["last_prompt"], *ui["chatbots"], *ui["nbest"], ui["details"], ui["status"],
               ui["records"]]
    controls = ui["controls"]
    live = cb.LiveRuns()

    c = len(cb.CONTROL_NAMES)

    def unpack(rest: tuple) -> tuple[tuple, dict, dict]:
        """(histories, control values, picked decoder per bot) from the inputs after the first one."""
        return rest[:n], dict(zip(cb.CONTROL_NAMES, rest[n : n + c])), dict(zip(bots, rest[n + c : n + c + n]))

    send = _Serializer(outputs)

    def on_chat(message, *rest):
        histories, values, decoders = unpack(rest)
        for turn in cb.chat(ctx, message, histories, values, decoders):
            yield send(turn)

    def on_rerun(last_prompt, *rest):
        histories, values, decoders = unpack(rest)
        for turn in cb.rerun(ctx, last_prompt, histories, values, decoders):
            yield send(turn)

    def on_release(last_prompt, *rest):  # rest: histories, controls, pickers, then the gr.Request Gradio passes in
        (histories, values, decoders), request = unpack(rest[:-1]), rest[-1]
        key = getattr(request, "session_hash", None) or "anonymous"
        for turn in cb.live_rerun(ctx, live, key, last_prompt, histories, values, decoders):
            yield send(turn)

    histories = [f"{_param(name)}_history" for name in bots]
    pickers = [f"{_param(name)}_decoder" for name in bots]
    _name_params(on_chat, ["message", *histories, *cb.CONTROL_NAMES, *pickers])
    _name_params(on_rerun, ["last_prompt", *histories, *cb.CONTROL_NAMES, *pickers])
    _name_params(on_release, ["last_prompt", *histories, *cb.CONTROL_NAMES, *pickers], request=True)
    events = dict(show_progress="hidden", concurrency_id=MODELS, postprocess=False)  # send() postprocesses
    state = [*ui["chatbots"], *controls, *ui["pickers"]]
    gr.on([ui["send"].click, ui["message"].submit], on_chat, [ui["message"], *state], outputs,
          api_name="chat", **events)
    ui["rerun"].click(on_rerun, [ui["last_prompt"], *state], outputs, api_name="rerun", **events)
    releases = [_moved(w) for w in [*controls, *ui["pickers"]]]
    gr.on(releases, on_release, [ui["last_prompt"], *state], outputs, api_name="live_rerun",
          api_visibility="undocumented", trigger_mode="multiple", **events)
    ui["clear"].click(lambda: send(cb.clear(bots)), None, outputs, api_name="clear",
                      api_visibility="undocumented", queue=False, postprocess=False)


class _Serializer:
    """A Turn as the values Gradio sends, each output already postprocessed by its component (what Gradio would do
    after the callback), for events registered with ``postprocess=False``. Gradio postprocesses each output in a
    thread of its own pool: a dozen thread hand-offs per streamed update (five updates a turn), the largest share of
    the web server's CPU per turn at one visitor. Here it happens in the callback's thread, once per update; what
    reaches the page and the API is the same. Every model is sent as plain data: Gradio diffs an update against
    the last one only through lists, dicts and strings, so a model object (the details JSON) would be replaced
    whole in every update, each bot's record crossing the wire again with each later reply."""

    def __init__(self, components: list[gr.components.Component]) -> None:
        self.components = components

    def __call__(self, turn: cb.Turn) -> tuple:
        out = []
        for comp, value in zip(self.components, turn.outputs(), strict=True):
            if value is cb.KEEP:
                out.append(gr.skip())
            elif isinstance(comp, gr.State):
                out.append(value)  # session state: stored as is, never sent
            elif isinstance(comp, gr.Dataframe) and isinstance(value, dict):
                out.append(table_payload(value, comp.headers))
            else:
                value = comp.postprocess(value)  # a pydantic model for most components (JSON's is not a Gradio one)
                out.append(value.model_dump() if isinstance(value, pydantic.BaseModel) else value)
        return tuple(out)


def table_payload(value: dict[str, Any], default_headers: list[str]) -> dict[str, Any]:
    """What ``gr.Dataframe.postprocess(value).model_dump()`` gives for a ``{"headers", "data"}`` table, without its
    checks for the other value types: each of those looks for the polars package on disk under Python's import
    lock, twice per table, which serialised the server's threads (60% of its busy samples at 32 visitors)."""
    headers = list(value.get("headers") or default_headers)
    data = value.get("data", [[]])
    if len(data) == 0:
        return {"headers": headers, "data": [], "metadata": None}
    width = len(data[0])
    headers = headers[:width] + [str(i) for i in range(len(headers) + 1, width + 1)]
    return {"headers": headers, "data": [list(row) for row in data], "metadata": value.get("metadata")}


def _param(name: str) -> str:
    """A bot name as a Python identifier for the API's parameter names (``mine/beam`` -> ``mine_beam``)."""
    return "".join(c if c.isalnum() else "_" for c in name)


def _name_params(fn, names: list[str], *, request: bool = False) -> None:
    """Give a ``*args`` callback named parameters, so the API lists them: ``predict(message=..., beam_size=3)``;
    ``request``: a last ``gr.Request`` parameter, which Gradio fills with the caller's request."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in names]
    if request:
        params.append(inspect.Parameter("request", kind, annotation=gr.Request))
        fn.__annotations__ = {"request": gr.Request}  # Gradio reads the type hints, not the signature
    fn.__signature__ = inspect.Signature(params)


def _layout(ctx: AppContext) -> dict:
    bots = ctx.bots
    ui: dict = {"chatbots": [], "nbest": [], "controls": [], "pickers": []}
    with gr.Row(equal_height=True):
        ui["message"] = gr.Textbox(placeholder=f"Say something to all {len(bots)} bots, then press Enter or Send",
                                   show_label=False, scale=6, max_lines=6, elem_id="message")
        ui["send"] = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        ui["rerun"] = gr.Button("Re-run", scale=1, elem_id="rerun")
        ui["clear"] = gr.Button("New conversation", scale=1, elem_id="clear")
    gr.Examples(EXAMPLES, inputs=[ui["message"]], label="Examples")
    with gr.Row(equal_height=False):
        for bot in bots.values():
            with gr.Column(min_width=230, elem_id=f"col-{_param(bot.name)}"):
                gr.Markdown(f"### {bot.label}\n{bot.description}", elem_classes="bot-head")
                ui["pickers"].append(gr.Dropdown(cb.picker_choices(), value=cb.BOT_DECODER, label="Decoder",
                                                 elem_id=f"decoder-{_param(bot.name)}", container=False,
                                                 info="any strategy on this bot's model; sliders below set it"))
                ui["chatbots"].append(gr.Chatbot(
                    label=bot.label, show_label=False, elem_id=f"chat-{_param(bot.name)}", height=380,
                    render_markdown=False, sanitize_html=True, feedback_options=None, buttons=["copy"],
                    placeholder=f"{bot.label} answers here"))
                with gr.Accordion("n-best list", open=False):
                    ui["nbest"].append(gr.Dataframe(headers=cb.NBEST_COLUMNS, interactive=False, wrap=True,
                                                    elem_id=f"nbest-{_param(bot.name)}", show_label=False))
    ui["status"] = gr.Markdown(elem_id="status")
    defaults = cb.default_settings(bots)
    widgets = {}

    def controls_row(group: str) -> None:
        with gr.Row():
            for c in cb.CONTROLS:
                if c.group == group:
                    widgets[c.name] = _control(c, ctx, defaults[c.name])

    controls_row("main")
    with gr.Accordion("Advanced", open=False):
        controls_row("search")
        controls_row("sampling")
    ui["controls"] = [widgets[name] for name in cb.CONTROL_NAMES]  # the order the callbacks unpack
    gr.Markdown("Move a slider (or press Enter in a text box) and the last message is answered again with it (or "
                "press **Re-run**). A moved slider acts on the bots it fits (listed under it); while a slider is "
                "where it started, each bot keeps its own bots.json setting.")
    with gr.Accordion("Reply details (JSON)", open=False):
        ui["details"] = gr.JSON(label="last turn", elem_id="details")
    ui["last_prompt"] = gr.State(None)
    ui["records"] = gr.State({})
    return ui


def _moved(widget: gr.components.Component):
    """The event of a control that answers the last message again: a slider released, a text box's Enter, any
    other control's input."""
    if isinstance(widget, gr.Slider):
        return widget.release
    return widget.submit if isinstance(widget, gr.Textbox) else widget.input


def _control(c: cb.Control, ctx: AppContext, value) -> gr.components.Component:
    fits = [b.label for b in ctx.bots.values() if cb.applies_to(b, c.name)]
    info = f"{c.info}. Acts on: {', '.join(fits) if fits else 'no bot (none has the model it needs)'}"
    if c.text:
        return gr.Textbox(value=value, label=c.label, info=f"{info}. Press Enter to answer again with it",
                          elem_id=f"ctl-{c.name}", min_width=200, max_lines=1)
    if c.checkbox:
        return gr.Checkbox(value=value, label=c.label, info=info, elem_id=f"ctl-{c.name}")
    return gr.Slider(c.minimum, c.maximum, value=value, step=c.step, label=c.label, info=info,
                     elem_id=f"ctl-{c.name}", min_width=200, interactive=bool(fits))
