"""Assemble a self-contained Hugging Face Space: spaces/ files + core/ + demo_app/ + checkpoints -> dist/space/.

    python -m demo_app.build_space                                  # shipped checkpoints/ -> dist/space/
    python -m demo_app.build_space --checkpoints runs/ckpt --out /tmp/space
    make space                                                      # the first line

Only what serving needs is copied: the Python sources (no caches), and for each checkpoint folder bots.json
names its weights, config, tokenizer, training log and model card (no optimizer state). The result runs with
``cd dist/space && python app.py`` and uploads as is (see spaces/README.md).
"""

from __future__ import annotations

import argparse
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
    (out / MARKER).write_text("built by python -m demo_app.build_space\n", encoding="utf-8")
    return out


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
    args = p.parse_args(argv)
    try:
        out = build_space(args.checkpoints, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"build_space: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MB); run it with: cd {out} && python app.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
