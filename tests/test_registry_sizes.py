"""Any number of bots: a bots.json of three or five bots is served without code changes (columns, API outputs,
batch table), and two checkpoint folders can be served side by side."""

from __future__ import annotations

import pytest
from gradio_client import Client
from helpers import registry


@pytest.fixture(params=[3, 5], ids=["three-bots", "five-bots"])
def served(request, tiny_checkpoints, tmp_path):
    import torch

    from demo_app.app import build_app
    from demo_app.server import make_context, start_server

    torch.set_num_threads(1)
    ctx = make_context(registry(tiny_checkpoints, tmp_path, request.param), device="cpu", arena=False, threads=1)
    handle = start_server(ctx, build_app(ctx))
    yield handle.url, ctx
    handle.close()
    ctx.scheduler.close()


def test_the_app_serves_every_bot_of_the_registry(served, tmp_path):
    url, ctx = served
    n = len(ctx.bots)
    client = Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    params = [p["parameter_name"] for p in
              client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/chat"]["parameters"]]
    assert params[1 : n + 1] == [f"{name}_history" for name in ctx.bots]
    out = client.predict(message="hello there", api_name="/chat")
    histories, details, status = out[1 : 1 + n], out[1 + 2 * n], out[2 + 2 * n]  # State outputs are not sent
    assert f"All {n} replies" in status
    assert list(details["bots"]) == list(ctx.bots)
    assert all(len(h) == 2 for h in histories)
    if "sampler" in ctx.bots:
        assert details["bots"]["sampler"]["settings"]["strategy"] == "sample"
    _, metrics, _, _, status = client.predict("hi\nbye", None, "dull rate", api_name="/batch")
    assert len(metrics["data"]) == n and f"2 prompts x {n} bots" in status


def test_two_checkpoint_folders_side_by_side(tiny_checkpoints, tmp_path):
    from demo_app.server import make_context

    mine = registry(tiny_checkpoints, tmp_path, 3)
    ctx = make_context([tiny_checkpoints, mine], device="cpu", arena=False, threads=1)
    try:
        assert list(ctx.bots) == ["greedy", "beam", "antilm", "rl", "bots3/greedy", "bots3/beam", "bots3/antilm"]
        assert ctx.bots["bots3/beam"].label.endswith("(bots3)")
        reply = ctx.scheduler.respond("bots3/antilm", "hello", {})
        assert reply.text.strip()
    finally:
        ctx.scheduler.close()
