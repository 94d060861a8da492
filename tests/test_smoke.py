"""The README's first command: the offline smoke recipe distills, evaluates and exports end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import AutoencoderTiny

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_recipe_runs_offline_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    # The README command, shortened: fewer steps, same teacher, photos, student and loss terms.
    cmd = [sys.executable, str(ROOT / "scripts" / "distill.py"), "--recipe", "smoke", "--output", str(out),
           "--train.steps", "12", "--data.final_steps", "3", "--loss.adv_start", "6", "--train.sample_every", "6",
           "--train.checkpoint_every", "6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr[-2000:]
    student = AutoencoderTiny.from_pretrained(out / "student")
    assert student.config.latent_channels == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["heldout_images"] == 2
    assert 5 < metrics["psnr_vs_teacher"] < 60 and 0 < metrics["lpips_vs_teacher"] < 1
    assert (out / "samples" / "step-0000012.png").exists()
    assert (out / "eval" / "eval.json").exists() and list((out / "eval").glob("grid_*.png"))
    assert json.loads((out / "run.json").read_text())["teacher"] == "tiny"
