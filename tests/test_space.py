"""The Hugging Face Space: its front matter, the build script, the push (offline: the Hub client is replaced), and
the assembled folder served from a subprocess."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio
import pytest
import yaml

from demo_app import build_space as build_space_module
from demo_app.build_space import LFS_PATTERNS, MARKER, build_space

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "spaces"


def front_matter(readme: Path) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme.read_text(encoding="utf-8"), re.S)
    assert match, "README.md must start with a --- front matter block ---"
    return yaml.safe_load(match.group(1))


def test_front_matter_is_what_spaces_expects():
    meta = front_matter(SPACES / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    pinned = tuple(int(x) for x in meta["sdk_version"].split(".")[:2])
    installed = tuple(int(x) for x in gradio.__version__.split(".")[:2])
    assert pinned[0] == installed[0] == 6  # pyproject: gradio>=6,<7; any 6.x release runs these tests
    assert meta["python_version"] == "3.11" and isinstance(meta["python_version"], str)
    assert meta["suggested_hardware"] == "cpu-basic" and meta["license"] == "mit"
    assert meta["title"] and meta["emoji"] and meta["colorFrom"] and meta["colorTo"]
    assert len(meta.get("short_description", "")) <= 60


def project_dependencies() -> list[str]:
    """``[project] dependencies`` of pyproject.toml (read without tomllib, which Python 3.10 lacks)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_requirements_cover_the_runtime_dependencies_with_cpu_torch():
    lines = [ln.strip() for ln in (SPACES / "requirements.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    names = {re.split(r"[<>=!~ \[]", ln)[0].lower() for ln in lines if ln and not ln.startswith(("#", "-"))}
    deps = project_dependencies()
    assert "torch>=2.2,<3" in deps and len(deps) >= 5
    needed = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps} - {"chitchat-dataset"}  # training only
    assert needed | {"matplotlib"} <= names
    assert "gradio" not in names  # Spaces install the sdk_version; a second pin could disagree


def test_build_copies_code_and_checkpoints_only(tiny_checkpoints, tmp_path):
    (tiny_checkpoints / "mle" / "train_state.json").write_text("{}")  # optimizer state is not shipped
    out = build_space(tiny_checkpoints, tmp_path / "space")
    for rel in ("app.py", "README.md", "requirements.txt", "core/bots.py", "demo_app/app.py", MARKER,
                "checkpoints/bots.json", "checkpoints/report.csv", "checkpoints/mle/model.safetensors",
                "checkpoints/mle/train_log.csv", "checkpoints/lm/tokenizer.json", "checkpoints/backward/config.json"):
        assert (out / rel).is_file(), rel
    assert not list(out.rglob("__pycache__")) and not list(out.rglob("train_state*"))
    build_space(tiny_checkpoints, out)  # a rebuild replaces its own folder


def test_build_refuses_bad_inputs(tiny_checkpoints, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by build_space"):
        build_space(tiny_checkpoints, foreign)
    assert (foreign / "keep.txt").exists()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "bots.json").write_text((tiny_checkpoints / "bots.json").read_text())
    with pytest.raises(FileNotFoundError, match="mle/model.safetensors"):
        build_space(tmp_path / "ck", tmp_path / "out")


def test_the_built_space_stores_every_binary_file_with_lfs(tiny_checkpoints, tmp_path):
    out = build_space(tiny_checkpoints, tmp_path / "space")
    lines = (out / ".gitattributes").read_text(encoding="utf-8").splitlines()
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in lines
    assert all(re.fullmatch(r"\*\.[a-z0-9]+ filter=lfs diff=lfs merge=lfs -text", ln) for ln in lines)
    tracked = [ln.split()[0] for ln in lines]
    assert "*.json" not in tracked and "*.py" not in tracked  # text stays text
    for f in out.rglob("*"):
        if f.is_file() and b"\0" in f.read_bytes()[:8192]:  # a binary file (weights): must go through LFS
            assert any(fnmatch.fnmatch(f.name, pattern) for pattern in tracked), f
    assert len(list(out.rglob("*.safetensors"))) == 4 and set(tracked) == set(LFS_PATTERNS)


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls, sends nothing."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        FakeHub.calls.append(("HfApi", {"token": token, **kwargs}))

    def create_repo(self, **kwargs):
        FakeHub.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        FakeHub.calls.append(("upload_folder", kwargs))
        assert (Path(kwargs["folder_path"]) / ".gitattributes").is_file()  # uploaded with the weights


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub


def test_push_builds_then_uploads_the_folder_as_a_space(tiny_checkpoints, tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "space"
    rc = build_space_module.main(["--checkpoints", str(tiny_checkpoints), "--out", str(out), "--push", "me/arena"])
    assert rc == 0
    (_, api), (_, create), (_, upload) = fake_hub.calls
    assert api["token"] == "hf_not_a_real_token"
    assert create == dict(repo_id="me/arena", repo_type="space", space_sdk="gradio", exist_ok=True)
    assert upload["repo_id"] == "me/arena" and upload["repo_type"] == "space"
    assert Path(upload["folder_path"]) == out and MARKER in upload["ignore_patterns"]
    printed = capsys.readouterr()
    assert "https://huggingface.co/spaces/me/arena" in printed.out
    assert "hf_not_a_real_token" not in printed.out + printed.err


@pytest.mark.parametrize("space,token,message", [
    ("me/arena", None, "no Hugging Face token: set HF_TOKEN to a write token"),
    ("arena", "hf_x", "the Space must be named owner/name"),
    ("me/are na", "hf_x", "the Space must be named owner/name"),
])
def test_push_refuses_without_a_token_or_a_space_name(tiny_checkpoints, tmp_path, fake_hub, monkeypatch, capsys,
                                                      space, token, message):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "space"
    rc = build_space_module.main(["--checkpoints", str(tiny_checkpoints), "--out", str(out), "--push", space])
    assert rc == 2 and message in capsys.readouterr().err
    assert fake_hub.calls == [] and not out.exists()  # checked before building, nothing sent


@pytest.mark.slow
def test_the_assembled_space_serves_replies_from_a_clean_directory(app_checkpoints, tmp_path, free_port):
    from gradio_client import Client

    space = build_space(app_checkpoints, tmp_path / "space")
    workdir = tmp_path / "elsewhere"  # nothing to import from here, and not the repository
    workdir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHATBOT_ARENA_CHECKPOINTS")}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1")
    log = tmp_path / "space.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(space / "app.py")], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, proc, log)
        assert f"code from {space}" in log.read_text()  # not the repository's core/
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        out = client.predict(message="hello, how are you?", beam_size=4, api_name="/chat")
        details = out[9]
        assert list(details["bots"]) == ["greedy", "beam", "antilm", "rl"]
        assert all(r["text"].strip() for r in details["bots"].values())
        assert details["bots"]["beam"]["settings"]["beam_size"] == 4
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Space exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Space did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_python_m_build_space_writes_the_folder(tiny_checkpoints, tmp_path):
    out = tmp_path / "space"
    res = subprocess.run([sys.executable, "-m", "demo_app.build_space", "--checkpoints", str(tiny_checkpoints),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / "app.py").is_file() and (out / "checkpoints" / "bots.json").is_file()
    assert "*.safetensors filter=lfs" in (out / ".gitattributes").read_text()
