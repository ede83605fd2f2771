"""A new decoding strategy or reply metric is one piece of code (and its test): once registered it is a setting,
a UI choice, an API value, a column, with no edit anywhere else. Each check runs in a fresh interpreter that
registers the new piece first, as a module of core would be at import (so no test here edits a shared registry).
A new bot is one entry of bots.json: tests/test_registry_sizes.py serves registries of three and five bots."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import ENV

STRATEGY = '''
import torch
from core.decoding.registry import Candidates, Strategy, register

@register
class Worst(Strategy):
    """The least likely token that is not blocked, at every step: a deliberately bad decoder."""

    name, reads = "worst", ()

    @staticmethod
    def width(cfg):
        return 1

    @classmethod
    def describe(cls, cfg):
        return "worst token"

    def __call__(self, scores, step_scores, K, ctx):
        B, R, V = step_scores.shape
        flat = step_scores.reshape(B, R * V)
        pick = flat.masked_fill(torch.isneginf(flat), float("inf")).argmin(-1, keepdim=True)  # (B, 1)
        return Candidates(scores.gather(1, pick // V) + flat.gather(1, pick), pick % V, pick // V)
'''


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_strategy_is_a_setting_a_choice_and_an_api_value_everywhere(tiny_checkpoints):
    found = run(STRATEGY + '''
import json, sys
import fastapi
from fastapi.testclient import TestClient
from core.bots import load_bots
from core.serving import BatchScheduler
from core.decoding import DecodeConfig, describe_settings, ui_controls
from demo_app.api import api_router
from demo_app.api_common import settings_catalog
from demo_app.context import AppContext
from demo_app.errors import install_error_handling

bots = load_bots(sys.argv[1])
bot = bots["greedy"]
reply = bot.respond("how are you?", strategy="worst", max_len=6)
greedy = bot.respond("how are you?", max_len=6)
app = fastapi.FastAPI()
install_error_handling(app, rate_limit=None)
scheduler = BatchScheduler(bots, threads=1)
app.include_router(api_router(AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=sys.argv[1])))
with TestClient(app) as client:
    api = client.post("/api/v1/reply", json={"bot": "greedy", "message": "how are you?",
                                             "settings": {"strategy": "worst", "max_len": 6}})
scheduler.close()
schema = app.openapi()["components"]["schemas"]["Settings"]["properties"]["strategy"]
print(json.dumps({
    "text": reply.text, "greedy": greedy.text, "logps": reply.logprobs, "greedy_logps": greedy.logprobs,
    "described": describe_settings(reply.settings), "valid": DecodeConfig(strategy="worst").strategy,
    "catalog": next(f["choices"] for f in settings_catalog() if f["name"] == "strategy"),
    "ui": next(list(c.choices) for c in ui_controls(every_field=True) if c.name == "strategy"),
    "api_status": api.status_code, "api_text": api.json().get("text"), "schema": json.dumps(schema),
}))
''', str(tiny_checkpoints))
    assert found["valid"] == "worst" and "worst token" in found["described"]
    assert found["logps"][0] < found["greedy_logps"][0]  # its first token is the least likely one, not greedy's
    assert "worst" in found["catalog"] and "worst" in found["ui"] and '"worst"' in found["schema"]
    assert found["api_status"] == 200 and found["api_text"] == found["text"]


METRIC = '''
from core.evaluation.metrics import METRICS, Metric

METRICS["question_rate"] = Metric("question_rate", "question rate", "share of replies that end with '?'", None,
                                  lambda replies, dull: sum(r.rstrip().endswith("?") for r in replies) / len(replies))
'''


def test_a_new_metric_is_a_column_of_every_table(tiny_checkpoints):
    found = run(METRIC + '''
import json, sys
from pathlib import Path
from core.bots import load_bots
from core.evaluation.metrics import reply_metrics
from core.serving import BatchScheduler
from demo_app.context import AppContext
from demo_app.tabs.batch import batch_compare

bots = load_bots(sys.argv[1])
scheduler = BatchScheduler(bots, threads=1)
result = batch_compare(AppContext(bots=bots, scheduler=scheduler, checkpoint_dir=Path(sys.argv[1])),
                       "how are you?\\nwhere do you live?")
scheduler.close()
print(json.dumps({"metrics": reply_metrics(["why?", "fine."]), "columns": list(result.metrics.columns)}))
''', str(tiny_checkpoints))
    assert found["metrics"]["question_rate"] == 0.5
    assert "question_rate" in found["columns"] or "question rate" in found["columns"], found["columns"]
