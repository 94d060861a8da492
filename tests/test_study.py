"""The quality study trains every arm per seed, evaluates it on the evaluation set, resumes, and reports."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tinyae.cli import main as tinyae_cli
from tinyae.data.images import sample_photos
from tinyae.errors import ConfigError, DataError
from tinyae.training.study import (
    KEYS,
    Study,
    _metadata,
    arms,
    check_same_recipe,
    claim_run,
    collect,
    curve_table,
    prepare,
    read_bench,
    release_run,
    run_lock,
    run_study,
    size_frontier,
    size_table,
    verdicts,
    write_report,
)
from tinyae.utils.locks import HOST


def test_every_arm_changes_the_full_recipe_and_the_baseline_is_the_former_default(tmp_path):
    names = [a.name for a in arms(300)]
    assert names[:2] == ["full", "baseline"] and len(set(names)) == len(names)
    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=300)
    full = study.recipe(arms(300)[0], 0)
    assert (full.loss.adv_loss, full.loss.adv_scale, full.loss.disc, full.loss.pixel_pool) == (
        "relativistic", "normalized", "multiscale", 8)
    assert full.train.steps == 300 and full.data.final_steps == 30 and full.teacher.name == "taef2"
    for arm in arms(300)[1:]:
        assert study.recipe(arm, 0).to_dict() != full.to_dict(), arm.name  # each arm changes something
    baseline = study.recipe(arms(300)[1], 0)
    assert (baseline.loss.adv_loss, baseline.loss.lpips_weight, baseline.loss.adv_start) == ("hinge", 0.1, 15)
    with pytest.raises(ConfigError, match="Unknown study arm 'nope'"):
        Study(out=None, photos=None, kodak=None, arm_names=("nope",)).arms
    with pytest.raises(ConfigError, match="Unknown reference arm 'nope'"):
        Study(out=None, photos=None, kodak=None, reference="nope")
    with pytest.raises(ConfigError, match="--curve-every 400 should be between 1 and --steps"):
        Study(out=None, photos=None, kodak=None, steps=300, curve_every=400)
    every_100 = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=300, curve_every=100).recipe(arms(300)[0], 0)
    assert (every_100.train.checkpoint_every, every_100.train.checkpoints_total_limit) == (100, 3)


def test_the_warm_regime_fine_tunes_the_named_donor_for_the_named_teacher_and_compares_with_the_finetune_recipe(
        tmp_path):
    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=250, regime="finetune",
                  overrides={"teacher": {"name": "tiny"}, "student": {"init": "taef2"}})
    assert study.reference == "finetune" and study.teacher.name == "tiny"
    recipes = {arm.name: study.recipe(arm, 0) for arm in study.arms}
    assert list(recipes)[:2] == ["finetune", "published"] and "cold" in recipes
    finetune = recipes["finetune"]
    assert (finetune.loss.target, finetune.optim.lr, finetune.train.parts, finetune.data.final_steps) == (
        "teacher", 1e-4, "decoder", 0)  # the finetune recipe as it ships, no closing phase added
    assert all(r.student.init == "taef2" for name, r in recipes.items() if name != "cold")
    assert recipes["cold"].student.init is None
    published = recipes["published"]
    assert (published.loss.adv_loss, published.loss.adv_scale, published.loss.pixel_pool, published.loss.lpips_weight,
            published.loss.target) == ("relativistic", "adaptive", 8, 0.0, "teacher")
    former = recipes["former_default"]
    assert (former.loss.adv_loss, former.loss.adv_weight, former.loss.lpips_weight) == ("hinge", 0.3, 0.1)
    with pytest.raises(ConfigError, match="Unknown study regime 'warm'; regimes: study, finetune"):
        Study(out=None, photos=None, kodak=None, regime="warm")
    with pytest.raises(ConfigError, match="Unknown reference arm 'full'; arms: finetune, published"):
        Study(out=None, photos=None, kodak=None, regime="finetune", reference="full")


def test_the_verdicts_compare_every_arm_with_the_chosen_reference():
    table = {"baseline": {"values": {"512": {k: [1.0, 1.0] for k, *_ in KEYS}}},
             "adaptive_gradient": {"values": {"512": {k: [2.0, 2.0] for k, *_ in KEYS}}}}
    lines = verdicts(table, "512", reference="baseline")
    assert len(lines) == 1 and lines[0].startswith("- `adaptive_gradient` vs `baseline`: PSNR vs teacher +1.00 (better)")
    assert "LPIPS vs original +1.000 (worse)" in lines[0]
    assert verdicts(table, "512") == []  # no `full` in this study


@pytest.mark.slow
def test_a_tiny_study_trains_evaluates_resumes_and_writes_its_report(tmp_path):
    photos = sample_photos(tmp_path / "photos")
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    for name in ("astronaut", "coffee"):  # stand-ins for Kodak: two photos the runs do not hold out
        shutil.copy(photos / f"{name}.png", kodak / f"{name}.png")
    study = Study(out=tmp_path / "study", photos=photos, kodak=kodak, steps=4, seeds=(0, 1),
                  arm_names=("full", "baseline"), parallel=2, resolutions=(64,), curve_every=2,
                  overrides={"data": {"resolution": 32, "final_resolution": 48}, "loss": {"disc_width": 8},
                             "student": {"encoder_blocks": [1], "decoder_blocks": [1]}})
    runs = run_study(study)
    assert len(runs) == 4 and all((r / "kodak.json").exists() for r in runs)
    curve = json.loads((runs[0] / "kodak-steps.json").read_text())
    assert curve["resolution"] == 64 and sorted(curve["steps"]) == ["2", "4"]  # a checkpoint every 2 steps
    assert curve["steps"]["4"]["psnr_vs_teacher"] == pytest.approx(
        json.loads((runs[0] / "kodak.json").read_text())["resolutions"]["64"]["metrics"]["decoder_vs_teacher"]["psnr"])
    stamps = [(r / "run.json").stat().st_mtime_ns for r in runs]
    halfway = json.loads((runs[1] / "kodak-steps.json").read_text())
    del halfway["steps"]["4"]  # as if evaluated while the run was still training
    halfway["steps"]["2"]["psnr_vs_teacher"] = 99.0
    (runs[1] / "kodak-steps.json").write_text(json.dumps(halfway))
    run_study(study)  # resumes: only the missing step is evaluated, nothing trained, nothing redone
    assert [(r / "run.json").stat().st_mtime_ns for r in runs] == stamps
    steps = json.loads((runs[1] / "kodak-steps.json").read_text())["steps"]
    assert list(steps) == ["2", "4"] and steps["2"]["psnr_vs_teacher"] == 99.0
    report = write_report(study, tmp_path / "docs" / "quality.md", tmp_path / "docs" / "quality")
    text = report.read_text()
    assert "| `full`" in text and "| `baseline`" in text and "`baseline` vs `full`" in text
    assert "## Along training" in text and re.search(r"\| `baseline` +\| 2 +\|", text)
    for figure in ("grid_full.jpg", "curves.png", "steps.png"):
        assert (tmp_path / "docs" / "quality" / figure).exists(), figure
    assert json.loads((runs[0] / "run.json").read_text())["time"]["cpu_s"] > 0


def test_a_kodak_reference_of_another_teacher_is_refused_before_any_arm_trains(tmp_path):
    photos = sample_photos(tmp_path / "photos")  # issue 26, case 2
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copy(photos / f"{name}.png", kodak / f"{name}.png")

    def study(teacher: str) -> Study:
        return Study(out=tmp_path / "study", photos=photos, kodak=kodak, steps=2, seeds=(0,), regime="finetune",
                     arm_names=("finetune", "cold"), resolutions=(32,),
                     overrides={"teacher": {"name": teacher}, "student": {"init": "taef2"}})

    prepare(study("taef2"))
    reference = tmp_path / "study" / "kodak-reference-32.safetensors"
    assert _metadata(reference)["teacher"] == "taef2" and len(_metadata(reference)["teacher_fingerprint"]) == 64
    prepare(study("taef2"))  # the same teacher: kept
    message = (r"'.*kodak-reference-32.safetensors' is the Kodak reference of the teacher 'taef2', but this study's "
               r"teacher is 'tiny'.*pass another --out")
    with pytest.raises(ConfigError, match=message):
        run_study(study("tiny"))
    assert not (tmp_path / "study" / "runs").exists()  # no arm trained
    refs = load_file(reference)  # a reference from before teachers were recorded: checked by its latents
    save_file(refs, reference, metadata={"names": _metadata(reference)["names"]})
    with pytest.raises(ConfigError, match="the teacher 'another teacher', but this study's teacher is 'tiny'"):
        prepare(study("tiny"))
    prepare(study("taef2"))


def test_a_kept_run_of_another_recipe_is_refused_before_any_arm_trains(tmp_path):
    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path / "kodak", steps=300, arm_names=("full", "baseline"),
                  seeds=(0,))
    (tmp_path / "kodak").mkdir()
    baseline = study.run_dir(study.arms[1], 0)
    baseline.mkdir(parents=True)
    (baseline / "recipe.json").write_text(json.dumps(study.recipe(study.arms[1], 0).to_dict()).replace(
        '"steps": 300', '"steps": 600'))
    with pytest.raises(ConfigError, match="holds a run of another recipe"):
        run_study(study)
    assert not study.run_dir(study.arms[0], 0).exists()


def _arm_values(psnr: list[float], lpips: list[float]) -> dict:
    return {"values": {"512": {"psnr_vs_teacher": psnr, "lpips_vs_teacher": lpips}}}


def test_the_size_frontier_names_each_size_within_the_bound_against_tiny_and_reads_its_speed_from_bench(tmp_path):
    table = {"full": _arm_values([30.0, 30.2], [0.10, 0.12]),  # tiny: 30.1 dB, 0.11
             "size_lean": _arm_values([29.5, 29.3], [0.12, 0.13]),  # -0.7 dB, +0.015: within
             "size_slim": _arm_values([29.0, 28.8], [0.13, 0.14]),  # -1.2 dB: outside
             "size_nano": _arm_values([29.9, 30.0], [0.15, 0.16])}  # +0.04 LPIPS: outside
    ratio = {"op": "decode", "batch": 1, "resolution": 512, "versus": "sd", "backend": "torch"}
    bench = {"measurements": [{"resolution": 256}, {"resolution": 512}],
             "ratios": [{**ratio, "model": "tiny", "latency": 11.7}, {**ratio, "model": "lean", "latency": 28.7},
                        {**ratio, "model": "lean", "latency": 2.5, "versus": "tiny"},
                        {**ratio, "model": "lean", "latency": 99.0, "resolution": 256}]}
    rows = {r["size"]: r for r in size_frontier(table, bench, "512")}
    assert [s for s, r in rows.items() if r["within_bound"]] == ["tiny", "lean"]
    assert rows["lean"]["psnr_vs_teacher_delta"] == pytest.approx(-0.7)
    assert rows["lean"]["speedup_torch"] == 28.7 and rows["slim"]["speedup_torch"] is None
    assert re.search(r"\| `lean` +\| 28\.7x +\|", size_table(list(rows.values())))
    assert verdicts({"size_lean": table["size_lean"]}, "512") == []  # a study of some arms only: nothing to compare
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    assert read_bench(tmp_path / "bench.json") == bench
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(DataError, match="not a bench.json"):
        read_bench(tmp_path / "other.json")


def test_a_kept_run_of_other_settings_is_refused_instead_of_reported_as_this_study(tmp_path):
    study = Study(out=tmp_path, photos=tmp_path / "photos", kodak=tmp_path, steps=300)
    full = arms(300)[0]
    run_dir = study.run_dir(full, 0)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.json").write_text(json.dumps(study.recipe(full, 0).to_dict()))
    check_same_recipe(run_dir, study.recipe(full, 0))  # the same run: kept
    moved = Study(out=tmp_path, photos=Path("elsewhere"), kodak=tmp_path, steps=300, threads=2)
    check_same_recipe(run_dir, moved.recipe(full, 0))  # where the photos are and how many threads: not what
    longer = Study(out=tmp_path, photos=tmp_path / "photos", kodak=tmp_path, steps=600)
    with pytest.raises(ConfigError, match=r"another recipe \(data.final_steps, train.steps differ\).*own --out"):
        check_same_recipe(run_dir, longer.recipe(full, 0))


def test_a_run_still_training_shows_the_steps_it_has_reached_along_training_but_no_end_result(tmp_path):
    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=1000, arm_names=("baseline",), seeds=(0,))
    run_dir = study.run_dir(arms(1000)[1], 0)
    run_dir.mkdir(parents=True)
    numbers = {key: 20.0 for key, *_ in KEYS}
    (run_dir / "kodak-steps.json").write_text(json.dumps({"resolution": 256, "steps": {"250": numbers,
                                                                                        "500": numbers}}))
    entry = collect(study)["baseline"]
    assert sorted(entry["curve"]) == [250, 500] and entry["values"] == {} and entry["unfinished"] == [0]
    assert re.search(r"\| `baseline` +\| 500 +\| 20\.00", curve_table({"baseline": entry}))


def test_a_wrong_recipe_override_stops_the_study_command_before_photos_are_fetched(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["study", "--kodak", str(tmp_path / "kodak"), "--out", str(tmp_path / "study"),
                    "--loss.adv_loss", "softplus"])
    assert exit_info.value.code == 2
    assert "loss.adv_loss" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------- concurrent and interrupted studies


def _interrupted_run(study: Study, arm) -> Path:
    """A run folder as a killed study leaves it: its recipe and a checkpoint, no run.json."""
    run_dir = study.run_dir(arm, 0)
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run_dir / "recipe.json").write_text(json.dumps(study.recipe(arm, 0).to_dict()))
    return run_dir


def test_an_interrupted_study_run_resumes_from_its_checkpoints_instead_of_deleting_them(tmp_path):
    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=300, arm_names=("baseline",), seeds=(0,))
    run_dir = _interrupted_run(study, study.arms[0])
    recipe = claim_run(study, study.arms[0], 0)
    assert recipe.train.resume == "latest" and (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    release_run(study, study.arms[0], 0)


def test_a_run_another_live_study_is_training_is_left_alone_and_a_dead_ones_is_taken_over(tmp_path):
    import subprocess
    import sys

    study = Study(out=tmp_path, photos=tmp_path, kodak=tmp_path, steps=300, arm_names=("baseline",), seeds=(0,))
    arm = study.arms[0]
    run_dir = _interrupted_run(study, arm)
    lock = run_lock(study, arm, 0)
    lock.write_text(f"{HOST} {os.getppid()}\n")  # our parent: alive
    assert claim_run(study, arm, 0) is None and (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{HOST} {int(dead.stdout)}\n")
    assert claim_run(study, arm, 0).train.resume == "latest"
    assert lock.read_text() == f"{HOST} {os.getpid()}\n"
    release_run(study, arm, 0)
    assert not lock.exists()


def test_unknown_arms_and_a_missing_kodak_folder_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tinyae.training.study.training_photos", lambda *a: pytest.fail("photos were fetched"))
    for flags, named in ((["--kodak", str(tmp_path), "--arms", "nosuch"], "Unknown study arm 'nosuch'"),
                         (["--kodak", str(tmp_path / "missing")], "Kodak folder")):
        with pytest.raises(SystemExit) as exit_info:
            tinyae_cli(["study", "--out", str(tmp_path / "study"), *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and named in err and "--data" not in err, err
    assert not (tmp_path / "study").exists()
