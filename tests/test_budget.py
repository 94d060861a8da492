"""The plan of a run's phases: memory measured on this CPU at 64 and 96 px and scaled, checked against a whole
step measured at a third size; the refusal of a phase that cannot fit; and the doctor's CPU check-up."""

import pytest

from tinyae.cli import main
from tinyae.cli import plan as plan_command
from tinyae.config import load_recipe
from tinyae.training import budget, checkup
from tinyae.training.budget import (
    HEADROOM,
    check_phases_fit,
    measured,
    measured_peak,
    phase_memory,
    plan_phases,
    refusal,
)
from tinyae.training.loop import phase_plan

# The smoke recipe (the small teacher shipped in weights/) with the smallest student, a closing phase at 96 px.
OVERRIDES = {"data": {"resolution": 32, "final_resolution": 96}, "train": {"batch_size": 2},
             "student": {"size": "nano"}, "loss": {"lpips_weight": 0.0}}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("smoke", OVERRIDES)


@pytest.fixture(scope="module")
def report(recipe):
    # also one whole step at 128 px, to hold the scaling against
    return measured(recipe, "no", phase_plan(recipe), verify=[128], use_cache=False)


def test_the_plan_scaled_from_64_and_96_px_is_within_20_percent_of_a_whole_step_measured_at_128_px(recipe, report):
    step = report["checks"]["128"]
    memory = phase_memory(recipe, report, 128, 2)
    planned, actual = memory["total"], measured_peak(step)
    assert abs(planned - actual) <= 0.2 * actual, (planned, actual)
    # the part that scales (activations, the teacher's encode), not only the weights that dominate a tiny model
    parts = memory["parts"]
    planned_step = planned - parts["weights"] - parts["replay"] - parts["batch"]
    actual_step = max(step["teacher"], step["student"], step["disc"])
    assert abs(planned_step - actual_step) <= 0.2 * actual_step, (planned_step, actual_step)


def test_gradient_checkpointing_is_measured_to_save_memory_at_the_closing_size(recipe, report):
    memory = phase_memory(recipe, report, 96, 2)
    assert memory["checkpointed"] < memory["total"]


def test_a_closing_phase_that_cannot_fit_is_refused_with_the_fixes_in_the_sentence(recipe, report):
    closing = phase_memory(recipe, report, 96, 2)
    room = (closing["checkpointed"] + closing["total"]) / 2  # checkpointing would fit, the plain step not
    assert phase_memory(recipe, report, 32, 2)["total"] < room
    plan = plan_phases(recipe, report, phase_plan(recipe), "a small card", room / HEADROOM, None)
    message = refusal(plan)
    assert message.startswith("The 96 px phase needs about")
    assert "--student.gradient_checkpointing true" in message
    assert "--data.final_resolution" in message
    roomy = plan_phases(recipe, report, phase_plan(recipe), "a big card", 2 * closing["total"] / HEADROOM, None)
    assert refusal(roomy) is None


def test_a_run_on_a_cpu_is_not_refused_on_gpu_grounds_and_measures_nothing(recipe, monkeypatch):
    class CpuAccelerator:
        device = __import__("torch").device("cpu")

    monkeypatch.setattr(budget, "measured", lambda *a, **k: pytest.fail("a CPU run measured a plan"))
    assert check_phases_fit(recipe, phase_plan(recipe), CpuAccelerator()) is None


def test_plan_prints_each_phase_with_a_named_gpus_memory_and_time(report, monkeypatch, capsys):
    monkeypatch.setattr(plan_command, "measured", lambda *a, **k: report)
    main(["plan", "--recipe", "smoke", "--data.resolution", "32", "--data.final_resolution", "96",
          "--batch_size", "2", "--student.size", "nano", "--loss.lpips_weight", "0", "--gpu", "h100"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 180 ") or line.startswith("| 20 ")]
    assert len(rows) == 2 and "H100-80GB" in out
    assert all(cells.split("|")[-3].strip() != "-" for cells in rows)  # s/step estimated from MACs


def test_doctor_runs_each_phase_and_resumes_bit_identically_on_this_cpu(recipe, report, monkeypatch, capsys):
    monkeypatch.setattr(checkup, "plan_run_memory",
                        lambda recipe, phases, precision=None: plan_phases(recipe, report, phases, "cpu", 64 * 2**30,
                                                                           None))
    main(["doctor", "--recipe", "smoke", "--data.resolution", "32", "--data.final_resolution", "48",
          "--batch_size", "2", "--student.size", "nano", "--loss.lpips_weight", "0", "--doctor-steps", "2"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| 32 ", "| 48 "))]
    assert len(rows) == 2
    assert all(float(images_per_s) > 0 and float(peak) > 0 and float(planned) > 0
               for _, _, images_per_s, peak, planned in rows)
    assert "precision in use: no" in out and "compile: not active" in out
    assert "the next step's weights are bit-identical" in out
