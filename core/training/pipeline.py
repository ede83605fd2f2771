"""From a corpus to a servable checkpoints folder in one resumable command: tokenizer, MLE model, language model,
backward model, RL policy, exports, tuned anti-LM defaults, bots.json and the evaluation table.

    chatbot-arena pipeline --corpus pairs.tsv --corpus-format tsv --out runs/mine --preset tiny
    chatbot-arena pipeline --corpus dialogues.txt --corpus-format lines --out runs/mine --max-minutes 60
    chatbot-arena pipeline --out . --preset shipped          # chitchat: what `make checkpoints` runs
    chatbot-arena serve --checkpoints runs/mine/checkpoints  # then chat with the result

Stages, in order; run the same command again and a complete stage is skipped, an unfinished one resumes:

    check      the corpus is read and checked before anything trains (a CorpusError names file, line, format)
    mle        DIR/runs/mle/       tokenizer.json, last/ (resume), best/, log.csv
    anneal     DIR/runs/anneal/    (presets with one) mle/best trained on with a decaying LR and the preset's
                                   conversation window (context_turns earlier turns with each message: the
                                   shipped and tiny presets); every bot uses its best/, RL starts from it
    lm         DIR/runs/lm/        the language model for anti-LM (same tokenizer)
    backward   DIR/runs/backward/  p(message | reply), for MMI and the RL coherence reward
    rl         DIR/runs/rl/        self-play RL from anneal/best, else mle/best (left out with --skip-rl)
    export     DIR/checkpoints/{mle,lm,backward,rl}/  fp16 weights, config, tokenizer, train_log.csv, MODEL_CARD.md
    bots       DIR/checkpoints/bots.json  greedy, beam, antilm, rl (an existing bots.json is kept)
    tune       the antilm bot's antilm, gamma, n_bonus chosen on the validation split, written into bots.json
    evaluate   DIR/checkpoints/report.csv and report.md on the test split

Presets set the model size and the step budgets (see :data:`PRESETS`); ``--max-minutes`` splits a time budget
across the training stages (printed before starting); a training stage cut short by it leaves a usable best/,
and the later stages run on it. DIR/runs/pipeline.json records the settings and the complete stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("check", "mle", "anneal", "lm", "backward", "rl", "export", "bots", "tune", "evaluate")
TRAINED = ("mle", "lm", "backward", "rl")  # the exported checkpoints (mle from the anneal run when there is one)
# share of --max-minutes for each training stage; the rest (about 15%) is left for export, tune and evaluate;
# a preset with an anneal stage gives it ANNEAL_SHARE of the MLE's share
TIME_SHARES = {"mle": 0.45, "lm": 0.15, "backward": 0.15, "rl": 0.10}
ANNEAL_SHARE = 0.25


@dataclass(frozen=True)
class Preset:
    """Model size and budgets of a pipeline run."""

    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by mle, lm and backward
    mle: dict[str, Any] = field(default_factory=dict)
    anneal: dict[str, Any] = field(default_factory=dict)  # empty: no anneal stage; else TrainConfig fields of it
    lm: dict[str, Any] = field(default_factory=dict)
    backward: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)  # RLConfig fields
    tune: dict[str, Any] = field(default_factory=dict)  # tune_antilm keywords
    evaluate: dict[str, Any] = field(default_factory=dict)  # evaluate_bots keywords


_SAVE = {"eval_every": 800, "save_every": 200}
PRESETS: dict[str, Preset] = {
    # a few minutes on 2 CPU cores on a corpus of a few hundred pairs: for trying the command and for tests
    "tiny": Preset(
        model={"emb_dim": 32, "hidden": 32, "enc_layers": 1, "dec_layers": 1, "dropout": 0.0},
        train={"vocab_size": 400, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "epochs": 1000.0,
               "eval_every": 100, "save_every": 100, "valid_max_batches": 10},
        mle={"max_steps": 400}, lm={"max_steps": 150}, backward={"max_steps": 150},
        anneal={"max_steps": 40, "lr": 1.5e-3, "lr_schedule": "cosine", "warmup_steps": 5, "eval_every": 20,
                "seed": 1, "context_turns": 2, "max_src_len": 60},
        rl={"steps": 6, "batch_size": 4, "group_size": 2, "turns": 2, "max_len": 8, "mle_batch_size": 8,
            "eval_every": 3, "save_every": 3, "valid_max_batches": 5, "dull_sample": 4},
        tune={"n_prompts": 8, "grid": {"antilm": [0.2, 0.4], "gamma": [2, 4], "n_bonus": [0.0]},
              "max_dull_rate": 1.0},  # 8 prompts bound no rate below 25%: no dull-rate cap
        evaluate={"n_prompts": 16, "n_dialogues": 4, "n_latency": 4},
    ),
    # a usable small model: one-layer GRUs of 128 units
    "small": Preset(
        model={"emb_dim": 128, "hidden": 128, "enc_layers": 1, "dec_layers": 1},
        train={"vocab_size": 4000, "epochs": 100.0, "eval_every": 500, "save_every": 100},
        mle={"max_steps": 2000}, lm={"max_steps": 1000}, backward={"max_steps": 1000},
        rl={"steps": 20, "batch_size": 16, "eval_every": 10},
        tune={"n_prompts": 100, "grid": {"antilm": [0.2, 0.3, 0.4, 0.5], "gamma": [2, 4], "n_bonus": [0.0, 0.25]}},
        evaluate={"n_prompts": 200, "n_dialogues": 50},
    ),
    # the shipped checkpoints: the single-turn MLE model, then the same model trained on with a window of two
    # earlier turns (context_turns 2, the source cut to its last 80 tokens; chosen on validation perplexity,
    # README "Conversations"); LM and backward read one turn, so they serve every window (defaults elsewhere)
    "shipped": Preset(
        mle={"epochs": 12.0, "max_steps": 8800, **_SAVE},
        anneal={"context_turns": 2, "max_src_len": 80, "lr": 5e-4, "lr_schedule": "cosine", "warmup_steps": 100,
                "max_steps": 3000, "eval_every": 500, "save_every": 100, "seed": 3},
        lm={"epochs": 4.0, "max_steps": 6400, **_SAVE},
        backward={"epochs": 3.0, "max_steps": 4800, **_SAVE},
        tune={"n_prompts": 200},
        evaluate={"n_prompts": 300, "n_dialogues": 100},
    ),
}

# the four standard bots with the shipped bots.json's decoders (chosen on chitchat's validation split); the anti-LM
# settings are replaced by the tune stage. The RL bot decodes as the anti-LM bot does, with its own length bonus.
_ANTILM_SEARCH = {"strategy": "beam", "beam_size": 10, "antilm": 0.5, "gamma": 4, "antilm_min_p": 0.05,
                  "no_repeat_context_ngram": 3}
STANDARD_BOTS: list[dict[str, Any]] = [
    {"name": "greedy", "label": "Greedy", "description": "Takes the single most likely token at every step.",
     "checkpoint": "mle", "lm": None, "backward": None, "decoder": {"strategy": "greedy"}},
    {"name": "beam", "label": "Beam search (K=10)",
     "description": "Keeps the 10 most likely partial replies at every step and returns the best whole reply, with a "
                    "length bonus of 1.0 per token (without it, beam search prefers two-word replies).",
     "checkpoint": "mle", "lm": None, "backward": "backward",
     "decoder": {"strategy": "beam", "beam_size": 10, "n_bonus": 1.0}},
    {"name": "antilm", "label": "Beam + anti-LM",
     "description": "Beam search (K=10) that subtracts a language model's log-probability from the first gamma "
                    "tokens, so replies that any prompt would get lose (Li et al. 2016, MMI-antiLM); the penalty "
                    "only acts on tokens the model finds plausible, plus a length bonus of 0.5 per token. It never "
                    "says again three words in a row that it said earlier in the conversation.",
     "checkpoint": "mle", "lm": "lm", "backward": "backward",
     "decoder": {**_ANTILM_SEARCH, "n_bonus": 0.5}},
    {"name": "rl", "label": "RL policy",
     "description": "The MLE model fine-tuned by policy gradient on simulated dialogues that read the conversation "
                    "(ease of answering, information flow, coherence; Li et al. 2016), decoded as the anti-LM bot "
                    "is (beam K=10, anti-LM 0.5 on the first 4 tokens with the same plausibility floor, no "
                    "three words of its own earlier turns again) with a length bonus of 1.0 per token.",
     "checkpoint": "rl", "lm": "lm", "backward": "backward",
     "decoder": {**_ANTILM_SEARCH, "n_bonus": 1.0}},
]


class PipelineInterrupted(RuntimeError):
    """A stage was stopped by Ctrl-C (its checkpoints are saved; the same command resumes it)."""


def stage_minutes(max_minutes: float, skip_rl: bool = False, anneal: bool = False) -> dict[str, float]:
    """Minutes of ``max_minutes`` for each training stage (0 everywhere when there is no budget)."""
    shares = {k: v for k, v in TIME_SHARES.items() if not (skip_rl and k == "rl")}
    if anneal:
        shares["anneal"] = shares["mle"] * ANNEAL_SHARE
        shares["mle"] -= shares["anneal"]
    return {k: round(max_minutes * v, 2) for k, v in shares.items()}


def runs_stage(p: Preset, stage: str, skip_rl: bool) -> bool:
    """Whether a run of preset ``p`` has ``stage`` (the anneal stage only with a preset that sets one; rl unless
    --skip-rl)."""
    return not (stage == "anneal" and not p.anneal) and not (stage == "rl" and skip_rl)


def plan(preset_name: str, max_minutes: float, skip_rl: bool) -> str:
    """The lines printed before starting: each stage with its step and time budget."""
    p = PRESETS[preset_name]
    minutes = stage_minutes(max_minutes, skip_rl, anneal=bool(p.anneal))
    lines = [f"pipeline preset {preset_name!r}: "
             + (f"time budget {max_minutes:g} min" if max_minutes else "no time budget (step budgets only)")]
    for stage in ("mle", "anneal", "lm", "backward", "rl"):
        if stage == "anneal" and not runs_stage(p, stage, skip_rl):
            continue
        if stage == "rl" and skip_rl:
            lines.append("  rl        skipped (--skip-rl)")
            continue
        steps = p.rl.get("steps", 60) if stage == "rl" else getattr(p, stage).get("max_steps", 0) or "all epochs"
        limit = f", at most {minutes[stage]:g} min" if max_minutes else ""
        lines.append(f"  {stage:<9} {steps} steps{limit}")
    rest = f" (about {max_minutes - sum(minutes.values()):.2f} min left for them)" if max_minutes else ""
    lines.append(f"  export, bots, tune ({p.tune.get('n_prompts', 200)} valid prompts), evaluate "
                 f"({p.evaluate.get('n_prompts', 300)} test prompts){rest}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- state between runs


class _State:
    """DIR/runs/pipeline.json: the settings of the run and the stages complete so far."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"settings": settings, "done": [], "provisional_rl": False}
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("settings") != settings:
                diff = {k: (saved.get("settings", {}).get(k), v) for k, v in settings.items()
                        if saved.get("settings", {}).get(k) != v}
                pretty = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                raise ValueError(f"{path.parent.parent} holds a pipeline run with other settings ({pretty}); use "
                                 f"another --out or the same settings to resume")
            self.data = {**self.data, **saved}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def mark(self, stage: str, complete: bool = True) -> None:
        done = [s for s in self.data["done"] if s != stage] + ([stage] if complete else [])
        self.data["done"] = done
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(out: str | Path, *, corpus: str | None = None, corpus_format: str | None = None,
                 preset: str = "small", max_minutes: float = 0.0, skip_rl: bool = False, threads: int = 0,
                 device: str = "auto") -> dict[str, Any]:
    """Run (or resume) every stage; returns {"checkpoints": DIR/checkpoints, "complete": bool, "stages": {...}}.
    Raises CorpusError for a bad corpus (before any training) and PipelineInterrupted on Ctrl-C."""
    from core.corpora import check_pairs, load_corpus

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if corpus is None:
        if corpus_format not in (None, "chitchat"):
            raise ValueError(f"--corpus FILE is needed for --corpus-format {corpus_format}")
        corpus = "chitchat"
    if max_minutes < 0:
        raise ValueError(f"--max-minutes must be >= 0, got {max_minutes}")
    p = PRESETS[preset]
    out = Path(out)
    runs, ckpts = out / "runs", out / "checkpoints"
    settings = {"corpus": corpus, "corpus_format": corpus_format, "preset": preset, "skip_rl": skip_rl}
    state = _State(runs / "pipeline.json", settings)
    print(plan(preset, max_minutes, skip_rl), flush=True)
    minutes = stage_minutes(max_minutes, skip_rl, anneal=bool(p.anneal))
    report: dict[str, str] = {}

    def skip(stage: str) -> bool:
        if state.done(stage):
            print(f"== {stage}: already complete (skipped)", flush=True)
            report[stage] = "skipped (complete)"
            return True
        print(f"== {stage}", flush=True)
        return False

    # 1. the corpus, checked before anything trains
    batch_size = p.train.get("batch_size", 64)
    if not skip("check"):
        convs = load_corpus(corpus, fmt=corpus_format, max_chars=p.train.get("max_chars"))
        n = check_pairs(convs, corpus, corpus_format, min_pairs=batch_size)
        print(f"{corpus}: {len(convs):,} conversations, {n:,} (query, response) pairs", flush=True)
        state.mark("check")
        report["check"] = f"{n} pairs"

    # 2. MLE (and its anneal), language model, backward model (same tokenizer)
    for stage in ("mle", "anneal", "lm", "backward"):
        if not runs_stage(p, stage, skip_rl):
            continue
        if stage == "anneal" and not state.done("mle"):  # anneals only a finished MLE run
            print("== anneal: waits for a complete mle stage", flush=True)
            report[stage] = "waiting for mle"
            continue
        if skip(stage):
            continue
        summary = _train_stage(stage, p, runs, corpus=corpus, corpus_format=corpus_format,
                               max_minutes=minutes.get(stage, 0.0), threads=threads, device=device)
        state.mark(stage, summary["done"])
        report[stage] = summary["stopped"]

    # 3. RL from anneal/best or mle/best (a run started from an unfinished model is started again once it is
    #    finished)
    start = "anneal" if runs_stage(p, "anneal", skip_rl) else "mle"
    upstream_done = all(state.done(s) for s in ("mle", start, "backward"))
    if not skip_rl and not skip("rl"):
        if state.data["provisional_rl"] and upstream_done and (runs / "rl").exists():
            print(f"{runs / 'rl'} started from unfinished models: starting it again", flush=True)
            shutil.rmtree(runs / "rl")
        summary = _rl_stage(p, runs, runs / start / "best", max_minutes=minutes.get("rl", 0.0), threads=threads,
                            device=device)
        state.data["provisional_rl"] = not upstream_done
        state.mark("rl", summary["done"] and upstream_done)
        report["rl"] = summary["stopped"]
    trained = [s for s in TRAINED if runs_stage(p, s, skip_rl)]
    all_trained = all(state.done(s) for s in (*trained, "anneal") if runs_stage(p, s, skip_rl))
    source = {s: runs / s for s in trained}
    if runs_stage(p, "anneal", skip_rl) and state.done("anneal"):
        source["mle"] = runs / "anneal"

    # 4. exports, bots.json, tuning, evaluation: redone until every training stage is complete
    from core.export import export_run

    if not skip("export"):
        for stage in trained:
            print(f"wrote {export_run(source[stage], ckpts / stage)}", flush=True)
        state.mark("export", all_trained)
        report["export"] = ", ".join(str(ckpts / s) for s in trained)
    if not skip("bots"):
        report["bots"] = write_bots_json(ckpts / "bots.json", with_rl=not skip_rl)
        state.mark("bots", all_trained)
    if not skip("tune"):
        report["tune"] = _tune_stage(p, ckpts, threads=threads, device=device)
        state.mark("tune", all_trained)
    if not skip("evaluate"):
        report["evaluate"] = _evaluate_stage(p, ckpts, threads=threads, device=device)
        state.mark("evaluate", all_trained)
    complete = all(state.done(s) for s in STAGES if runs_stage(p, s, skip_rl))
    print(f"\n{ckpts}: {'complete' if complete else 'usable; run the same command again to continue training'}"
          f"\n  chatbot-arena serve --checkpoints {ckpts}", flush=True)
    return {"checkpoints": str(ckpts), "complete": complete, "stages": report}


def _train_stage(stage: str, p: Preset, runs: Path, *, corpus: str, corpus_format: str | None,
                 max_minutes: float, threads: int, device: str) -> dict[str, Any]:
    from core.model import ModelConfig
    from core.training.train import TrainConfig, train

    kind = {"mle": "seq2seq", "anneal": "seq2seq", "lm": "lm", "backward": "backward"}[stage]
    settings: dict[str, Any] = {**p.train, **getattr(p, stage)}
    if stage == "anneal":
        settings["init_from"] = str(runs / "mle" / "best")
    cfg = TrainConfig(out=str(runs / stage), kind=kind, corpus=corpus, corpus_format=corpus_format,
                      tokenizer=None if stage == "mle" else str(runs / "mle" / "tokenizer.json"),
                      model=ModelConfig(**p.model), max_minutes=max_minutes, threads=threads, device=device,
                      progress=False, **settings)
    summary = train(cfg)
    if summary["interrupted"]:
        raise PipelineInterrupted(f"stage {stage} interrupted at step {summary['step']}; its checkpoints are saved")
    return summary


def _rl_stage(p: Preset, runs: Path, policy: Path, *, max_minutes: float, threads: int, device: str
              ) -> dict[str, Any]:
    from core.training.rl import RLConfig, train_rl

    cfg = RLConfig(out=str(runs / "rl"), policy=str(policy), backward=str(runs / "backward" / "best"),
                   max_minutes=max_minutes, threads=threads, device=device, **p.rl)
    summary = train_rl(cfg)
    if summary["interrupted"]:
        raise PipelineInterrupted(f"stage rl interrupted at step {summary['step']}; its checkpoints are saved")
    return summary


def write_bots_json(path: Path, *, with_rl: bool = True) -> str:
    """Write the standard bots into ``path`` unless a bots.json is already there; returns what happened."""
    if path.exists():
        print(f"{path} exists: kept as it is", flush=True)
        return "kept"
    bots = [b for b in STANDARD_BOTS if with_rl or b["name"] != "rl"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"bots": bots}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path} ({', '.join(b['name'] for b in bots)})", flush=True)
    return f"{len(bots)} bots"


def _tune_stage(p: Preset, ckpts: Path, *, threads: int, device: str) -> str:
    from core.bots import load_bots
    from core.evaluation.evaluate import load_split_for
    from core.evaluation.tune import tune_antilm, write_bot_defaults
    from core.training.rewards import dull_list
    from core.training.runs import set_threads

    set_threads(threads)
    bots = load_bots(ckpts, device=device)
    if "antilm" not in bots:
        return "no antilm bot in bots.json: nothing to tune"
    split = load_split_for(bots["antilm"])
    try:
        chosen, _ = tune_antilm(bots["antilm"], split, dull=dull_list(split.train), **p.tune)
    except ValueError as e:  # no grid point keeps the replies' fit: keep the defaults, and say so
        print(f"tune: {e}; keeping the antilm bot's settings", flush=True)
        return "no feasible grid point: defaults kept"
    write_bot_defaults(ckpts / "bots.json", "antilm", chosen)
    print(f"tune: antilm bot set to {chosen} in {ckpts / 'bots.json'}", flush=True)
    return json.dumps(chosen)


def _evaluate_stage(p: Preset, ckpts: Path, *, threads: int, device: str) -> str:
    from core.bots import load_bots
    from core.evaluation.evaluate import evaluate_bots, load_split_for, to_markdown, write_report
    from core.training.rewards import dull_list
    from core.training.runs import set_threads

    set_threads(threads)
    bots = load_bots(ckpts, device=device)
    split = load_split_for(next(iter(bots.values())))
    df = evaluate_bots(bots, split, dull=dull_list(split.train), **p.evaluate)
    out = write_report(df, ckpts / "report.csv")
    print(to_markdown(df), flush=True)
    print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)
    return str(out)


# ----------------------------------------------------------------------------- command line

EXAMPLES = """examples:
  chatbot-arena pipeline --corpus pairs.tsv --corpus-format tsv --out runs/mine --preset tiny
  chatbot-arena pipeline --corpus movie-dialogs/ --corpus-format cornell --out runs/movies --max-minutes 120
  chatbot-arena pipeline --out . --preset shipped            # chitchat: reproduces checkpoints/ (make checkpoints)
  chatbot-arena serve --checkpoints runs/mine/checkpoints    # your bots in the app
Run the same command again to resume: complete stages are skipped, an unfinished one continues."""


def _cmd_pipeline(args: argparse.Namespace) -> int:
    try:
        run_pipeline(args.out, corpus=args.corpus, corpus_format=args.corpus_format, preset=args.preset,
                              max_minutes=args.max_minutes, skip_rl=args.skip_rl, threads=args.threads,
                              device=args.device)
    except PipelineInterrupted as e:
        print(f"chatbot-arena pipeline: {e}; run the same command again to resume", flush=True)
        return 130
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pipeline`` subcommand (called by core.cli for every module of CORE_COMMAND_MODULES)."""
    from core.corpora import LOADERS

    p = subparsers.add_parser("pipeline", help="corpus -> tokenizer, MLE, LM, backward, RL, bots.json, tuning, "
                              "evaluation in one resumable command", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=None, help="corpus file or folder (default: chitchat, shipped offline)")
    p.add_argument("--corpus-format", default=None, choices=sorted(LOADERS),
                   help="format of --corpus (default: guessed from the name)")
    p.add_argument("--out", required=True, help="output folder: DIR/runs/ (training runs), DIR/checkpoints/")
    p.add_argument("--preset", default="small", choices=list(PRESETS),
                   help="model size and step budgets: tiny (minutes), small, shipped (default: small)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="time budget, split across the training stages (0: step budgets only)")
    p.add_argument("--skip-rl", action="store_true", help="no RL stage (three bots: greedy, beam, antilm)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    p.set_defaults(func=_cmd_pipeline)
