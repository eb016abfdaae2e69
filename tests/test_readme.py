"""The README stays true: its two set-up commands exist, CI runs the test one verbatim, and the FLOPs
numbers it prints come from the command it names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hieravid.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands_one_each_for_demo_and_tests():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("&& hieravid demo")  # the main job, offline
    assert commands[1].endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()


def test_readme_flops_table_matches_the_command(capsys):
    rows = re.findall(r"\| (llava-[a-z-]+7b)[^|]*\| (hieravid|uniform) \| 0.3 / 0.2 / 0.1 \| ([^|]+) \| ([^|]+) %", README)
    assert len(rows) == 3
    for preset, method, tflops, ratios in rows:
        got_t, got_r = [], []
        for budget in (0.3, 0.2, 0.1):
            assert main(["flops", "--preset", preset, "--method", method, "--budget", str(budget), "--json"]) == 0
            out = json.loads(capsys.readouterr().out)
            got_t.append(f"{out['pruned_tflops']:.2f}")
            got_r.append(f"{100 * out['ratio']:.1f}")
        assert [t.strip() for t in tflops.split("/")] == got_t
        assert [r.strip() for r in ratios.split("/")] == got_r


def test_the_python_example_runs_on_a_saved_model(tmp_path, monkeypatch):
    """The README's first Python example, verbatim but for the checkpoint (a tiny Qwen2-VL with random
    weights and its real processor, saved and loaded with ``from_pretrained``) and the video file."""
    from tiny_models import build_model, build_processor, random_video

    from hieravid.video import write_test_video

    code = re.search(r"## Use it on a model\n\n```python\n(.+?)\n```", README, flags=re.S).group(1)
    assert code.count('"Qwen/Qwen2-VL-7B-Instruct"') == 2 and code.count('"clip.mp4"') == 1
    model = build_model("qwen2_vl")
    build_processor("qwen2_vl", model, tmp_path)
    model.save_pretrained(tmp_path)
    write_test_video(tmp_path / "clip.mp4", random_video(frames=8), fps=4)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code.replace('"Qwen/Qwen2-VL-7B-Instruct"', repr(str(tmp_path))), scope)
    stats, out, inputs = scope["stats"], scope["out"], scope["inputs"]
    assert out.shape[1] > inputs["input_ids"].shape[1]  # it generated
    assert stats.pruned and 0 < stats.flops_ratio < 1 and stats.achieved_budget < 0.35
    assert not scope["handle"].active
    drawing = re.search(r"as `hieravid run --viz` does.*?\n\n```python\n(.+?)\n```", README, flags=re.S).group(1)
    exec(drawing, scope)
    assert (tmp_path / "decisions.png").is_file() and scope["picture"].panels[1].startswith("Stage 1")
