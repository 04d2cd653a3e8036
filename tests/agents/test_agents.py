"""Real agents end to end through homelab-router: Codex CLI (Responses API only) and aider (Chat Completions)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from services.sim_upstream.server import answer_text
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

FULL = answer_text(12)


def codex_home(tmp: Path, base_url: str, model: str = "homelab/code") -> Path:
    """The exact settings the README gives for Codex."""
    home = tmp / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f'''model = "{model}"
model_provider = "homelab"

[model_providers.homelab]
name = "homelab"
base_url = "{base_url}"
wire_api = "responses"
''')
    return home


def run_codex(codex: Path, home: Path, work: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    work.mkdir(exist_ok=True)
    env = {**os.environ, "CODEX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run([str(codex), "exec", "--skip-git-repo-check", prompt], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def native(lab: Lab, api: str) -> None:
    """ubuntu-6000's engine serves ``api`` (responses, messages) itself, and the route relays it there."""
    lab.configure("ubuntu-6000", **{api: True})
    lab.policy["routes"]["ubuntu-6000"][api] = "native"
    lab.write_policy(lab.policy)
    assert httpx.post(lab.url + "/admin/reload-config",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


@pytest.mark.parametrize("mode", ["translate", "native"])
def test_codex_cli_answers_through_the_router(lab: Lab, codex: Path, tmp_path: Path, mode: str) -> None:
    if mode == "native":
        native(lab, "responses")
    p = run_codex(codex, codex_home(tmp_path, lab.base_url), tmp_path / "work", "Refactor this function")
    assert p.returncode == 0, p.stdout + p.stderr
    assert FULL in p.stdout
    lines = [d for d in read_jsonl(lab.log_dir / "router-decisions.jsonl") if d.get("endpoint") == "/v1/responses"]
    assert lines and all(d["status"] == 200 and d["stream"] is True for d in lines)
    assert lines[-1]["route"] == "ubuntu-6000"
    if mode == "translate":  # the built-in tools Codex offers were dropped, and said so
        assert any(e.startswith("dropped_tool:") for e in lines[-1]["events"])
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert ("input" in sent) == (mode == "native")


def test_aider_edits_a_file_through_the_router(lab: Lab, aider: Path, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    target = work / "calc.py"
    target.write_text("def add(a, b):\n    return a - b\n")
    # the model's answer in aider's "whole" edit format: the file name, then the whole new file
    lab.configure("ubuntu-6000", reply="calc.py\n```python\ndef add(a, b):\n    return a + b\n```\n")
    env = {**os.environ, "OPENAI_API_KEY": "unused", "OPENAI_API_BASE": lab.base_url,
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "AIDER_ANALYTICS": "false", "NO_COLOR": "1",
           "HOME": str(tmp_path)}
    p = subprocess.run([str(aider), "--model", "openai/homelab/code", "--edit-format", "whole", "--no-git",
                        "--yes-always", "--no-check-update", "--no-show-model-warnings", "--no-pretty",
                        "--no-analytics", "--map-tokens", "0", "--message", "Fix the add function (refactor it)",
                        "calc.py"], cwd=work, env=env, capture_output=True, text=True, timeout=240,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert target.read_text() == "def add(a, b):\n    return a + b\n", p.stdout[-3000:]
    chats = [d for d in read_jsonl(lab.log_dir / "router-decisions.jsonl") if d.get("route")]
    assert chats and chats[-1]["endpoint"] == "/v1/chat/completions" and chats[-1]["route"] == "ubuntu-6000"


def run_claude(claude: Path, lab: Lab, tmp: Path, prompt: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Claude Code as the README sets it up: ANTHROPIC_BASE_URL at the lab, any key."""
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "ANTHROPIC_BASE_URL": lab.url, "ANTHROPIC_API_KEY": "unused", "HOME": str(tmp),
           "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_COLOR": "1"}
    return subprocess.run([str(claude), "-p", prompt, *extra], cwd=work, env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("mode", ["translate", "native"])
def test_claude_code_answers_through_the_router(lab: Lab, claude_code: Path, tmp_path: Path, mode: str) -> None:
    if mode == "native":
        native(lab, "messages")
    p = run_claude(claude_code, lab, tmp_path, "say pong")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert FULL in p.stdout
    lines = [d for d in read_jsonl(lab.log_dir / "router-decisions.jsonl") if d.get("endpoint") == "/v1/messages"]
    main = [d for d in lines if d.get("route") == "ubuntu-6000"]
    assert main and all(d["status"] == 200 for d in lines)
    assert main[-1]["tokens"] > 2_000  # Claude Code's system prompt and tool definitions, counted


@pytest.mark.parametrize("engine", ["native", "glm45"])
def test_claude_code_writes_a_file_with_its_tool(lab: Lab, claude_code: Path, tmp_path: Path, engine: str) -> None:
    """``glm45``: the engine has no tool parser and leaves GLM-4.5's markup as text; the route's
    tool_parser turns it into the call Claude Code runs."""
    target = tmp_path / "work" / "pong.txt"
    # the simulated model asks Claude Code to write a file; its next turn gets the tool's result
    lab.configure("ubuntu-6000", tool_call={"name": "Write", "arguments": {"file_path": str(target),
                                                                          "content": "pong\n"}},
                  tool_format=engine, auto_tool_choice=engine == "native")
    p = run_claude(claude_code, lab, tmp_path, "write pong to pong.txt", "--allowedTools", "Write",
                   "--permission-mode", "acceptEdits")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert target.read_text() == "pong\n"
    assert "The tool returned:" in p.stdout
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert sent["messages"][-1]["role"] == "tool"  # the tool_result came back as the model's next input
    if engine != "native":
        lines = read_jsonl(lab.log_dir / "router-decisions.jsonl")
        assert any("tool_calls_parsed:glm45:1" in (d.get("events") or ()) for d in lines)


def embedded_models(lab: Lab) -> None:
    """The lab's simulated models as `homelab up` starts them (services/up.py): vLLM (LM Studio on
    win-5090), calling the tool the prompt asks for, in each route's markup where the route parses it."""
    for name, route in lab.policy["routes"].items():
        parser = route.get("tool_parser", "none")
        lab.configure(name, engine="lmstudio" if name == "win-5090" else "vllm", tool_call_any=True,
                      **({"tool_format": parser, "auto_tool_choice": False} if parser != "none" else {}))


def readme_block(marker: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readmes_claude_code_block_writes_the_file_on_the_embedded_lab(lab: Lab, claude_code: Path,
                                                                          tmp_path: Path) -> None:
    """A new user copies the README's block into a shell: Claude Code asks the lab, the model calls its
    Write tool (not the first tool offered), and the file is there. Its HEAD probes are no requests."""
    embedded_models(lab)
    block = readme_block("claude-code")
    script = block.replace("http://127.0.0.1:8080", lab.url).replace("\n  claude ", f"\n  {claude_code} ")
    assert str(claude_code) in script
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "DISABLE_AUTOUPDATER": "1",
           "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "NO_COLOR": "1"}
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=240,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.rstrip().endswith("hi"), p.stdout[-2000:]  # `cat hello.txt`: the file Claude Code wrote
    assert "InputValidationError" not in p.stdout + p.stderr
    lines = read_jsonl(lab.log_dir / "router-decisions.jsonl")
    assert not [d for d in lines if d.get("method") == "HEAD" or d.get("status") == 404]
    assert httpx.head(lab.url + "/").status_code == 200
