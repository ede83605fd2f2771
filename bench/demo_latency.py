"""How long `make demo` takes to answer: time to the first reply after the command, and p50 for all four replies.

    python bench/demo_latency.py                      # runs `make demo PORT=7871` in this checkout
    python bench/demo_latency.py --repo /tmp/fresh    # ... in a fresh clone (the first run also builds .venv)

Starts ``make demo`` as a subprocess, polls the page with ``gradio_client`` until it answers, sends one message
through the app's ``/chat`` endpoint (all bots, the way the page does) and reports the seconds from the command to
that first complete answer; then sends ``--prompts`` more messages, one at a time, and reports the median wall time
of one ``/chat`` call (every bot's reply to one prompt). Stops the server at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["hi, how are you?", "what do you do for fun?", "i love pizza", "where are you from?",
           "do you have any pets?", "i went hiking yesterday", "what's your favorite movie?", "i'm so tired today",
           "any plans for the weekend?", "what music do you like?", "i just got a new job", "do you like sports?"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    from gradio_client import Client

    t0 = time.perf_counter()
    server = subprocess.Popen(["make", "demo", f"PORT={args.port}"], cwd=args.repo, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = None
        while client is None:
            if server.poll() is not None:
                print(f"make demo exited with {server.returncode}", file=sys.stderr)
                return 1
            if time.perf_counter() - t0 > args.timeout:
                print("the app did not come up in time", file=sys.stderr)
                return 1
            try:
                client = Client(f"http://127.0.0.1:{args.port}/", verbose=False)
            except Exception:
                time.sleep(0.5)
        t_up = time.perf_counter() - t0
        out = client.predict(message=PROMPTS[0], api_name="/chat")
        t_first = time.perf_counter() - t0
        n_bots = sum(1 for h in out[1:5] if h)
        times = []
        for prompt in (PROMPTS * 10)[1 : 1 + args.prompts]:
            t = time.perf_counter()
            client.predict(message=prompt, api_name="/chat")
            times.append(time.perf_counter() - t)
        print(f"server answering {t_up:.1f} s after `make demo`; first reply ({n_bots} bots) {t_first:.1f} s; "
              f"p50 of all replies to one prompt {statistics.median(times):.2f} s over {len(times)} prompts "
              f"(min {min(times):.2f}, max {max(times):.2f})")
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
