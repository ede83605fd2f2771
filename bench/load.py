"""Load benchmark: N simulated visitors chat with a launched app over HTTP, batching on vs off in the same run.

    python bench/load.py                                     # 1 and 32 users, no think time, 30 s each, on + off
    python bench/load.py --users 32 --think 5 --duration 120 # the issue's crowd: 5 s think time, 2 minutes
    python bench/load.py --users 2 --duration 10             # a quick check that everything works
    python bench/load.py --users 1 32 1 32 1 32 --modes on   # three pairs: each 32-user rate vs the 1 user before it
    python bench/load.py --device cuda --users 1 32 64       # on a GPU machine
    python bench/load.py --modes on --json dist/load-on.json # batching on only
    python bench/load.py --client gradio --threads 2         # gradio_client users; the server with 2 torch threads
    python bench/load.py --turns 8 --modes on                # conversations that grow turn by turn (8, then anew)

For each mode (``on``: the default server; ``off``: ``chatbot-arena serve --no-batching``, every request decoded
alone) it starts ``chatbot-arena serve`` from this checkout's .venv on a free loopback port with the given
``--checkpoints`` (and a throw-away vote folder), waits until the page answers and warms the bots up. Then, for
each ``--users`` count, that many closed-loop users run for ``--duration`` seconds: each user is one page (one
session; ``--client browser``, the default: ``queue/join`` and the event stream, as the browser does, see
:class:`BrowserUser`) or one ``gradio_client.Client`` (``--client gradio``), sends a prompt to the ``/chat``
endpoint (parameter ``message``: every bot replies), waits for the final update, thinks for ``--think`` seconds
(uniformly 0.5x to 1.5x, seeded), and sends the next. With ``--turns N`` (browser client) a user keeps its
conversation: each message goes with the columns' chats of the previous answer (as the page sends them), so
every bot reads a window that grows turn by turn; after N turns the user starts a new conversation. No request
starts after the deadline; those under way are waited for (at most ``--request-timeout`` s each).

Reported per mode and user count: completed requests, errors (an exception or a timeout), throughput (requests/s
over the window from the first send to the last answer), latency p50 / p95 / max of one ``/chat`` call (all the
bots' replies), the throughput relative to the latest 1-user run of the same mode (so alternating counts pair
up), the server's RSS (VmRSS of /proc/<pid>/status) before and after the user count ran, and the CPU cores the
server and the simulated users (this process) kept busy: on a small machine they share the cores. A markdown table
is printed and every row is written as JSON (``--json``, default dist/load.json). Loopback only; every run is
bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["hi, how are you?", "what do you do for fun?", "i love pizza", "where are you from?",
           "do you have any pets?", "i went hiking yesterday", "what's your favorite movie?", "i'm so tired today",
           "any plans for the weekend?", "what music do you like?", "i just got a new job", "do you like sports?",
           "my sister is visiting next week", "have you ever been to paris?", "it is raining again here",
           "what did you have for breakfast?"]


@dataclass
class Row:
    mode: str  # "on" (batching) or "off"
    users: int
    think_s: float
    duration_s: float
    requests: int  # completed without error
    errors: int
    throughput_rps: float
    p50_s: float
    p95_s: float
    max_s: float
    vs_one_user: float | None  # throughput / the 1-user throughput of the same mode
    rss_before_mb: float
    rss_after_mb: float
    rss_growth: float  # after / before - 1
    server_cores: float  # CPU time of the server and its decode processes over the window / the window
    bench_cores: float  # the same for this process (the simulated users): what the load generator takes
    first_error: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the server and its decode processes), from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:
                pass
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its descendants, from /proc/<pid>/stat; nan where /proc
    is not there."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the decode processes), from /proc/<pid>/status (MB);
    nan where /proc is not there."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += next(int(line.split()[1]) / 1024 for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return float("nan")
    return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


class Server:
    """``chatbot-arena serve`` in a subprocess of its own session, on 127.0.0.1:port."""

    def __init__(self, *, batching: bool, checkpoints: Path, device: str, port: int, log: Path,
                 extra: list[str] | None = None) -> None:
        extra = extra or []
        exe = REPO / ".venv" / "bin" / "chatbot-arena"
        if not exe.exists():
            raise SystemExit(f"{exe} not found: run `make setup` first")
        self.data = tempfile.TemporaryDirectory(prefix="load-votes-")
        cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--checkpoints", str(checkpoints),
               "--device", device, "--data-dir", self.data.name]
        if not batching:
            cmd.append("--no-batching")
        cmd += extra
        self.url, self.log = f"http://127.0.0.1:{port}/", log
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; its log "
                                 f"({self.log}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"the server did not answer on {self.url} within {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.data.cleanup()


def make_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, analytics_enabled=False)


def chat(client: Any, message: str, timeout: float) -> None:
    """One /chat call through ``gradio_client``, waiting for its final update."""
    job = client.submit(message=message, api_name="/chat")
    try:
        job.result(timeout=timeout)
    except BaseException:
        job.cancel()
        raise


class GradioUser:
    """A visitor through ``gradio_client`` (``--client gradio``)."""

    def __init__(self, url: str) -> None:
        self.client = make_client(url)

    def chat(self, message: str, timeout: float) -> None:
        chat(self.client, message, timeout)

    def close(self) -> None:
        close = getattr(self.client, "close", None)  # older gradio_client versions have none
        if close:
            close()


class BrowserUser:
    """A visitor as a browser is one: ``POST queue/join`` with the inputs, then read the event stream of its session
    (``GET queue/data``, server-sent events with the streamed updates as diffs) until ``process_completed``. The
    updates are read, not applied: the page's work happens on the visitor's machine, not on the server's CPUs,
    which ``gradio_client`` (one heartbeat and one stream thread per client, diffs applied in Python) would share
    with the server here. The inputs are the /chat endpoint's defaults with ``message`` set."""

    def __init__(self, url: str, template: dict[str, Any], turns: int = 0) -> None:
        import httpx

        self.url, self.template, self.turns = url.rstrip("/") + "/gradio_api/", template, turns
        self.chats: list[Any] | None = None  # the columns' chats after the last answer (with --turns)
        self.turn = 0
        self.http = httpx.Client(timeout=httpx.Timeout(120.0))
        self.session = uuid.uuid4().hex  # one page, one session: its state lives on the server until it leaves

    @staticmethod
    def template(url: str) -> dict[str, Any]:
        """fn_index and default inputs of /chat, read once through gradio_client's view of the API."""
        client = make_client(url)
        try:
            info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/chat"]
            data = [p.get("parameter_default") for p in info["parameters"]]
            names = [p["parameter_name"] for p in info["parameters"]]
            return {"fn_index": client._infer_fn_index("/chat", None), "data": data,
                    "message_at": names.index("message"),
                    "history_at": [i for i, n in enumerate(names) if n.endswith("_history")]}
        finally:
            client.close()

    def chat(self, message: str, timeout: float) -> None:
        data = list(self.template["data"])
        data[self.template["message_at"]] = message
        if self.turns and self.chats is not None and self.turn < self.turns:  # the conversation goes on
            for i, chat_value in zip(self.template["history_at"], self.chats):
                data[i] = chat_value
        else:
            self.chats, self.turn = None, 0
        r = self.http.post(self.url + "queue/join", json={"data": data, "event_data": None, "trigger_id": None,
                                                          "fn_index": self.template["fn_index"],
                                                          "session_hash": self.session})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        deadline = time.perf_counter() + timeout
        with self.http.stream("GET", self.url + "queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no final update within {timeout:.0f} s")
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                if msg.get("msg") == "process_completed":
                    if not msg.get("success", False):
                        raise RuntimeError(f"the server answered with an error: {str(msg.get('output'))[:200]}")
                    if self.turns:  # outputs: message, last prompt, then one chat per column (what /chat takes)
                        out = msg["output"]["data"]
                        self.chats = out[2: 2 + len(self.template["history_at"])]
                        self.turn += 1
                        if any(len(c) != 2 * self.turn for c in self.chats):  # the conversation must have grown
                            raise RuntimeError(f"turn {self.turn}: chats of {[len(c) for c in self.chats]} messages")
                    return
                if msg.get("msg") == "close_stream":
                    break
        raise RuntimeError("the event stream closed before the final update")

    def close(self) -> None:
        self.http.close()


def run_users(url: str, users: int, *, think: float, duration: float, timeout: float, seed: int,
              client: str = "browser", turns: int = 0) -> tuple[list[float], list[str], float]:
    """Closed loop of ``users`` users for ``duration`` s: (latencies of completed calls, errors, window in s).
    ``client``: ``browser`` (:class:`BrowserUser`) or ``gradio`` (``gradio_client``); ``turns``: conversations
    of that many turns (browser client)."""
    if client == "browser":
        template = BrowserUser.template(url)
        clients: list[Any] = [BrowserUser(url, template, turns) for _ in range(users)]
    else:
        clients = [GradioUser(url) for _ in range(users)]  # connected before the clock starts
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + duration
    last_end = [start]

    def user(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        n = i
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                clients[i].chat(PROMPTS[n % len(PROMPTS)], timeout)
                ok, err = True, ""
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                ok, err = False, f"{type(e).__name__}: {e}"[:300]
            t1 = time.perf_counter()
            with lock:
                (latencies.append(t1 - t0) if ok else errors.append(err))
                last_end[0] = max(last_end[0], t1)
            n += 1
            if think > 0:
                time.sleep(min(think * rng.uniform(0.5, 1.5), max(0.0, deadline - time.perf_counter())))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 30)
    for c in clients:
        c.close()
    return latencies, errors, last_end[0] - start


def bench_mode(mode: str, args: argparse.Namespace, port: int) -> list[Row]:
    log = Path(tempfile.gettempdir()) / f"load-server-{mode}-{port}.log"
    extra = [f"--threads={args.threads}"] if args.threads else []
    extra += [f"--workers={args.workers}"] if args.workers else []
    extra += [] if args.decode_process else ["--no-decode-process"]
    server = Server(batching=mode == "on", checkpoints=args.checkpoints, device=args.device, port=port, log=log,
                    extra=extra)
    rows: list[Row] = []
    try:
        server.wait_until_up(args.startup_timeout)
        warm = make_client(server.url)
        for prompt in PROMPTS[:3]:  # first calls pack weights and allocate
            chat(warm, prompt, args.request_timeout)
        one_user = None
        for users in args.users:
            before = rss_mb(server.proc.pid)
            cpu0, own0, t0 = cpu_s(server.proc.pid), sum(os.times()[:2]), time.perf_counter()
            lat, errs, window = run_users(server.url, users, think=args.think, duration=args.duration,
                                          timeout=args.request_timeout, seed=args.seed, client=args.client,
                                          turns=args.turns)
            after = rss_mb(server.proc.pid)
            wall = time.perf_counter() - t0
            server_cores = (cpu_s(server.proc.pid) - cpu0) / wall
            bench_cores = (sum(os.times()[:2]) - own0) / wall
            rps = len(lat) / window if window > 0 else 0.0
            if users == 1:
                one_user = rps
            rows.append(Row(mode=mode, users=users, think_s=args.think, duration_s=round(window, 2),
                            requests=len(lat), errors=len(errs), throughput_rps=rps, p50_s=percentile(lat, 50),
                            p95_s=percentile(lat, 95), max_s=max(lat, default=float("nan")),
                            vs_one_user=rps / one_user if one_user else None, rss_before_mb=before,
                            rss_after_mb=after, rss_growth=after / before - 1 if before else float("nan"),
                            server_cores=server_cores, bench_cores=bench_cores,
                            first_error=errs[0] if errs else ""))
            print(f"  {mode:>3} {users:>3} users: {len(lat)} ok, {len(errs)} errors, {rps:.2f} req/s, "
                  f"p50 {rows[-1].p50_s:.2f} s, p95 {rows[-1].p95_s:.2f} s", flush=True)
    finally:
        server.stop()
    return rows


def in_process_p50(checkpoints: Path, device: str, rounds: int = 3, threads: int | None = None,
                   workers: int | None = None, decode_process: bool = True) -> float:
    """p50 of one turn of every bot without HTTP: the side-by-side callback over the batching scheduler set up as
    the server's (torch threads, workers, decode processes), the same prompts as the users send; the floor the
    one-user HTTP latency is compared with."""
    sys.path.insert(0, str(REPO))
    from demo_app.serve import default_workers
    from demo_app.server import make_context
    from demo_app.tabs.side_by_side import chat

    ctx = make_context(checkpoints, device=device, arena=False, threads=threads, workers=workers or default_workers(),
                       decode_process=decode_process)
    try:
        for prompt in PROMPTS[:3]:  # warm-up, as for the server
            list(chat(ctx, prompt, [[] for _ in ctx.bots], {}))
        times = []
        for _ in range(rounds):
            for prompt in PROMPTS:
                t0 = time.perf_counter()
                list(chat(ctx, prompt, [[] for _ in ctx.bots], {}))
                times.append(time.perf_counter() - t0)
    finally:
        ctx.scheduler.close()
    return percentile(times, 50)


def to_markdown(rows: list[Row]) -> str:
    head = ("| batching | users | think (s) | requests | errors | req/s | vs 1 user | p50 (s) | p95 (s) | max (s) "
            "| RSS before (MB) | RSS after (MB) | RSS growth | server cores | bench cores |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = f"{r.vs_one_user:.2f}x" if r.vs_one_user is not None else "-"
        lines.append(f"| {r.mode} | {r.users} | {r.think_s:g} | {r.requests} | {r.errors} | {r.throughput_rps:.2f} "
                     f"| {vs} | {r.p50_s:.2f} | {r.p95_s:.2f} | {r.max_s:.2f} | {r.rss_before_mb:.0f} "
                     f"| {r.rss_after_mb:.0f} | {r.rss_growth:+.1%} | {r.server_cores:.2f} | {r.bench_cores:.2f} |")
    return "\n".join(lines)


def _json_row(row: Row) -> dict[str, Any]:
    """The row as a dict with nan (no value) as null, so the file is strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[1, 32], help="user counts to run, in order (1 32)")
    ap.add_argument("--think", type=float, default=0.0, help="mean think time between a user's requests, s (0)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds each user count runs (30)")
    ap.add_argument("--modes", nargs="+", choices=("on", "off"), default=["on", "off"],
                    help="batching on, off, or both (default: both, on first)")
    ap.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints", help="folder with bots.json")
    ap.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda, auto)")
    ap.add_argument("--client", choices=("browser", "gradio"), default="browser",
                    help="browser: queue/join + the event stream, as a page does (default); gradio: gradio_client")
    ap.add_argument("--turns", type=int, default=0,
                    help="browser client: each user keeps its conversation for N turns, then starts anew (0: every "
                         "message alone)")
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default)")
    ap.add_argument("--workers", type=int, default=0, help="the server's --workers (0: its default)")
    ap.add_argument("--decode-process", action=argparse.BooleanOptionalAction, default=True,
                    help="the server's --decode-process (default: on, as serve's)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a call counts as an error")
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for the server to come up")
    ap.add_argument("--seed", type=int, default=0, help="seed of the think times")
    ap.add_argument("--json", type=Path, default=REPO / "dist" / "load.json", help="where the rows go as JSON")
    ap.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True,
                    help="first time the same turns in this process, without HTTP (the one-user floor)")
    args = ap.parse_args(argv)
    if any(u < 1 for u in args.users) or args.duration <= 0 or args.think < 0:
        ap.error("--users must be >= 1, --duration > 0 and --think >= 0")
    if not (args.checkpoints / "bots.json").exists():
        ap.error(f"{args.checkpoints}/bots.json not found: pass --checkpoints <folder with bots.json>")
    floor = None
    if args.in_process:
        floor = in_process_p50(args.checkpoints, args.device, threads=args.threads or None,
                               workers=args.workers or None, decode_process=args.decode_process)
        print(f"in process (no HTTP): every bot's reply to one prompt, p50 {floor:.3f} s", flush=True)
    rows: list[Row] = []
    for mode in args.modes:
        print(f"batching {mode}: starting chatbot-arena serve ...", flush=True)
        rows += bench_mode(mode, args, args.port or free_port())
    print(f"\n/chat calls (every bot replies), {args.duration:g} s per user count, device {args.device}, "
          f"{os.cpu_count()} CPUs\n")
    print(to_markdown(rows))
    one = next((r for r in rows if r.mode == "on" and r.users == 1), None)
    if floor and one:
        print(f"\none user over HTTP (batching on) p50 {one.p50_s:.3f} s vs in process {floor:.3f} s: "
              f"{one.p50_s / floor:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                     "in_process_p50_s": floor, "rows": [_json_row(r) for r in rows]}, indent=2),
                         encoding="utf-8")
    print(f"\nwrote {args.json}")
    errors = sum(r.errors for r in rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
