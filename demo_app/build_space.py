"""Assemble a self-contained Hugging Face Space: spaces/ files + core/ + demo_app/ + checkpoints -> dist/space/.

    python -m demo_app.build_space                                  # shipped checkpoints/ -> dist/space/
    python -m demo_app.build_space --checkpoints runs/ckpt --out /tmp/space
    make space                                                      # the first line
    HF_TOKEN=hf_... python -m demo_app.build_space --push owner/name  # build, then upload to that Space
    make space-push SPACE=owner/name                                # the line above

Only what serving needs is copied: the Python sources (no caches), and for each checkpoint folder bots.json
names its weights, config, tokenizer, training log and model card (no optimizer state). A ``.gitattributes``
stores the weights and other binary files with Git LFS, as the Hub requires. The result runs with
``cd dist/space && python app.py``. ``--push`` uploads it with ``huggingface_hub`` (the Space is created if it
does not exist), with a write token from the environment variable HF_TOKEN (see spaces/README.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from core.bots import read_bots_json

REPO = Path(__file__).resolve().parent.parent
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
PACKAGES = ("core", "demo_app")
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "train_log.csv", "MODEL_CARD.md")
REQUIRED = ("model.safetensors", "config.json", "tokenizer.json")
TOP_FILES = ("bots.json", "report.csv", "report.md")
MARKER = ".space-build"  # marks a folder this script made, so a rebuild may replace it
# binary files the Hub accepts only through Git LFS / Xet (JSON, CSV, Markdown and Python stay plain text)
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.npy", "*.npz", "*.onnx",
                "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.ico", "*.pdf", "*.zip", "*.gz", "*.tar")
TOKEN_ENV = "HF_TOKEN"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def gitattributes() -> str:
    """The Space's .gitattributes: every binary pattern of LFS_PATTERNS goes through Git LFS."""
    return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def build_space(checkpoints: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the Space folder ``out`` (default dist/space) from ``checkpoints`` (default: the shipped ones)."""
    checkpoints = Path(checkpoints) if checkpoints else REPO / "checkpoints"
    out = Path(out) if out else REPO / "dist" / "space"
    folders = _checkpoint_folders(checkpoints)
    _clear(out)
    for name in SPACE_FILES:
        shutil.copy2(REPO / "spaces" / name, out / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, out / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dest = out / "checkpoints"
    dest.mkdir()
    for name in TOP_FILES:
        if (checkpoints / name).exists():
            shutil.copy2(checkpoints / name, dest / name)
    for folder in folders:
        (dest / folder).mkdir()
        for name in CHECKPOINT_FILES:
            if (checkpoints / folder / name).exists():
                shutil.copy2(checkpoints / folder / name, dest / folder / name)
    (out / ".gitattributes").write_text(gitattributes(), encoding="utf-8")
    (out / MARKER).write_text("built by python -m demo_app.build_space\n", encoding="utf-8")
    return out


class PushError(RuntimeError):
    """The Space cannot be pushed (no token, a bad Space name)."""


def check_push(repo_id: str, token: str | None = None) -> str:
    """The token to push with (``token``, else $HF_TOKEN); PushError for a bad Space name or no token."""
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise PushError(f"the Space must be named owner/name (letters, digits, '.', '_', '-'), got {repo_id!r}")
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        raise PushError(f"no Hugging Face token: set {TOKEN_ENV} to a write token from "
                        "https://huggingface.co/settings/tokens (HF_TOKEN=hf_... make space-push SPACE=owner/name)")
    return token


def push_space(folder: str | Path, repo_id: str, *, token: str | None = None) -> str:
    """Upload the built Space ``folder`` to the Hugging Face Space ``repo_id`` ("owner/name"), creating it when
    it does not exist; returns the Space's URL. The token is ``token``, else $HF_TOKEN; it is never printed."""
    from huggingface_hub import HfApi  # imported here: only pushing needs it

    token = check_push(repo_id, token)
    folder = Path(folder)
    if not (folder / MARKER).exists():
        raise PushError(f"{folder} is not a Space built by build_space; build it first (make space)")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder), ignore_patterns=[MARKER],
                      commit_message="Update the Space from python -m demo_app.build_space --push")
    return f"https://huggingface.co/spaces/{repo_id}"


def _checkpoint_folders(checkpoints: Path) -> list[str]:
    """The folders bots.json names, each checked for the files serving needs."""
    specs = read_bots_json(checkpoints / "bots.json")
    folders = list(dict.fromkeys(f for s in specs for f in (s.checkpoint, s.lm, s.backward) if f))
    missing = [f"{folder}/{name}" for folder in folders for name in REQUIRED
               if not (checkpoints / folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{checkpoints}: missing {', '.join(missing)}; train and export the checkpoints "
                                "first (see README), or pass --checkpoints <folder with bots.json>")
    return folders


def _clear(out: Path) -> None:
    """Make ``out`` an empty folder, refusing to delete a non-empty folder this script did not make."""
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise FileExistsError(f"{out} exists and was not made by build_space; pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, default=None, help="folder with bots.json (default: checkpoints/)")
    p.add_argument("--out", type=Path, default=None, help="Space folder to write (default: dist/space/)")
    p.add_argument("--push", metavar="OWNER/NAME", default=None,
                   help=f"then upload the folder to this Hugging Face Space (token from ${TOKEN_ENV})")
    args = p.parse_args(argv)
    if args.push is not None:
        try:
            check_push(args.push)  # before spending time on the build
        except PushError as e:
            print(f"build_space: {e}", file=sys.stderr)
            return 2
    try:
        out = build_space(args.checkpoints, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"build_space: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MB); run it with: cd {out} && python app.py")
    if args.push is not None:
        try:
            url = push_space(out, args.push)
        except PushError as e:
            print(f"build_space: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - network and Hub errors: say what failed, without the token
            print(f"build_space: uploading to {args.push} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"pushed {out} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
