"""Benchmark: positive times, MACs and ratios in one run, student sizes and ONNX Runtime in the same table,
memory growth that sees a real allocation, clear labels."""

import json
import time

import pytest
import torch
from tiny_pipelines import VAES

from tinyae.config import StudentConfig
from tinyae.errors import ConfigError, TinyaeError
from tinyae.evaluation.bench import (
    PeakRSS,
    bench,
    default_student,
    describe,
    format_cost,
    format_table,
    load_models,
    measure,
    size_students,
    tiled_decode,
    write_report,
)
from tinyae.evaluation.factors import as_teacher
from tinyae.models.student import Student


@pytest.mark.parametrize("use_kernel_peak", [True, False], ids=["high-water-mark", "sampled"])
def test_peak_rss_sees_a_transient_allocation(use_kernel_peak):
    with PeakRSS(use_kernel_peak=use_kernel_peak) as peak:
        block = torch.ones(64 * 2**20)  # 256 MB, touched
        deadline = time.monotonic() + 120  # however busy the machine, until the sampler has run once since
        while not use_kernel_peak and peak._peak - peak._base < 200 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
    assert peak.growth > 200 * 2**20
    assert peak.method


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A tiny benchmark: the small conftest VAE vs a small student at 16 and 32 px, two timed repeats."""
    from conftest import small_vae

    from tinyae.config import StudentConfig
    from tinyae.models.teacher import Teacher

    teacher = Teacher(small_vae(), scaling_factor=0.5, shift_factor=0.1, name="small")
    student = Student(StudentConfig(latent_channels=4, encoder_widths=[16], decoder_widths=[16],
                                    encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])).eval()
    return bench(("small student", student), {"small": teacher}, resolutions=[16, 32], batch_sizes=[1], repeats=2)


def test_every_model_op_and_size_gets_positive_times(results):
    assert len(results["measurements"]) == 2 * 2 * 2  # models x ops x resolutions
    for m in results["measurements"]:
        assert m["median_s"] > 0 and len(m["times_s"]) == 2 and m["peak_mem_mb"] >= 0 and m["macs"] > 0
        assert m["backend"] == "torch"
        assert m["median_s"] == pytest.approx(sorted(m["times_s"])[0] / 2 + sorted(m["times_s"])[1] / 2)
    assert {(m["model"], m["op"], m["resolution"]) for m in results["measurements"]} == {
        (model, op, px) for model in ("student", "small") for op in ("encode", "decode") for px in (16, 32)}


def test_ratios_are_teacher_over_student(results):
    by_key = {(m["model"], m["op"], m["resolution"]): m for m in results["measurements"]}
    assert len(results["ratios"]) == 4 and {r["versus"] for r in results["ratios"]} == {"small"}
    for r in results["ratios"]:
        t, s = by_key[("small", r["op"], r["resolution"])], by_key[("student", r["op"], r["resolution"])]
        assert r["model"] == "student" and r["backend"] == "torch"
        assert r["latency"] == pytest.approx(t["median_s"] / s["median_s"]) and r["latency"] > 0


def test_report_files_and_table(results, tmp_path):
    paths = write_report(results, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["format"] == "tinyae-bench/2"
    assert data["environment"]["device"] == "cpu" and data["environment"]["threads"] == torch.get_num_threads()
    assert paths["plot"].stat().st_size > 10_000 and paths["frontier"].stat().st_size > 10_000
    table = format_table(results)
    assert "| 32 " in table and table.count("x ") >= 4  # a ratio on each student row
    assert "x faster than small" in table
    assert "| 32 " in paths["md"].read_text() and "GMACs by stage" in paths["md"].read_text()


def test_weights_free_teachers_are_labelled(tmp_path):
    students, teachers = load_models("default", ["sd"])
    label, student = students["student"]
    assert label == "default Student (random weights)" and student.latent_channels == 4
    assert teachers["sd"].name == "sd (random weights)"
    assert sum(p.numel() for p in teachers["sd"].vae.decoder.parameters()) > 40e6  # the real SD VAE architecture
    info = bench((label, student), {}, resolutions=[16], repeats=1)
    assert "random weights: speed only" in describe(info)


def test_teachers_of_several_latent_spaces_each_get_their_own_default_student():
    students, _ = load_models("default", ["sd", "sdxl", "sana"])
    assert set(students) == {"student:sd", "student:sana"}  # sdxl shares sd's latent shape, so its student
    assert students["student:sana"][1].downscale == 32


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="repeats"):
        measure({"f": lambda: None}, torch.device("cpu"), repeats=0)
    with pytest.raises(TinyaeError):
        load_models(str(tmp_path / "missing"), ["sd"])
    with pytest.raises(ConfigError, match="dtype"):
        load_models("default", ["sd"], dtype="int8")


def test_each_teacher_is_measured_beside_the_student_of_its_own_family():
    teachers = {family: as_teacher(build()) for family, build in VAES.items()}
    students = {f"student:{name}": ("default", default_student(t).eval()) for name, t in teachers.items()}
    assert students["student:sana"][1].downscale == 32 and students["student:flux2"][1].arch.pool
    results = bench(students, teachers, resolutions=[64], repeats=1)
    pairs = {(r["model"], r["versus"]) for r in results["ratios"] if r["versus"] in teachers}
    assert pairs == {("student:flux2", "flux2"), ("student:sana", "sana"), ("student:qwen-image", "qwen-image")}
    by_model = {(m["model"], m["op"]): m for m in results["measurements"]}
    assert all(by_model[(name, "decode")]["median_s"] > 0 for name in students)
    assert "latents unpatchify" in describe(results)


def test_sizes_and_onnxruntime_share_one_table_with_macs_and_two_references(tmp_path):
    """The frontier run: every size on both backends, against the teacher and against the default (tiny) size."""
    pytest.importorskip("onnxruntime")
    from conftest import small_vae

    from tinyae.models.teacher import Teacher

    teacher = Teacher(small_vae(), scaling_factor=0.5, shift_factor=0.1, name="small")
    students = size_students(["tiny", "slim"], teacher)
    assert [label for label, _ in students.values()] == ["tiny student (random weights)",
                                                         "slim student (random weights)"]
    results = bench(students, {"small": teacher}, resolutions=[32], repeats=1, backends=["torch", "onnxruntime"])
    rows = {(m["model"], m["backend"], m["op"]): m for m in results["measurements"]}
    assert set(rows) == {(model, backend, op) for op in ("encode", "decode")
                         for model, backend in [("tiny", "torch"), ("slim", "torch"), ("tiny", "onnxruntime"),
                                                ("slim", "onnxruntime"), ("small", "torch")]}
    assert rows["slim", "onnxruntime", "decode"]["macs"] == rows["slim", "torch", "decode"]["macs"]
    assert rows["slim", "torch", "decode"]["macs"] * 3.5 < rows["tiny", "torch", "decode"]["macs"]
    assert results["reference"] == "tiny"
    versus = {(r["model"], r["backend"], r["versus"]) for r in results["ratios"]}
    assert ("slim", "onnxruntime", "tiny") in versus and ("tiny", "onnxruntime", "tiny") in versus
    assert ("tiny", "torch", "tiny") not in versus and ("slim", "torch", "small") in versus
    table = format_table(results)
    assert "onnxruntime" in table and "x faster than small" in table and "x faster than tiny" in table
    cost = results["cost"]["tiny"]["decoder"]
    assert max(cost, key=cost.get) == 32  # the full-resolution stage costs most
    assert "tiny" in format_cost(results) and results["environment"]["onnxruntime"]


def test_a_size_named_like_a_teacher_keeps_both_rows():
    """The `tiny` teacher preset and the `tiny` size: the teacher's rows are renamed, not overwritten."""
    _, teachers = load_models("default", ["tiny"])
    results = bench(size_students(["tiny"], teachers["tiny"]), teachers, resolutions=[16], repeats=1)
    assert {m["model"] for m in results["measurements"]} == {"tiny", "tiny teacher"}


def test_a_tiled_decode_reports_its_peak_memory_beside_the_size_of_its_output():
    students = {"student": ("default student", Student(StudentConfig(latent_channels=4, decoder_blocks=[1])).eval())}
    (row,) = tiled_decode(students, 1024)  # 128 x 128 latents: 9 tiles of 64 with the default overlap
    assert row["finite"] and row["output_mb"] == pytest.approx(12.0) and row["seconds"] > 0
    assert row["peak_mem_mb"] >= 0 and row["memory_method"]
    assert not students["student"][1].use_tiling  # left as it was found


@pytest.mark.parametrize("flags, named", [
    (["--batch", "1", "0"], "--batch must be positive, got 0"),
    (["--resolutions", "0"], "--resolutions must be positive, got 0"),
    (["--threads", "0"], "--threads must be positive, got 0"),
])
def test_bench_arguments_that_cannot_work_are_one_sentence_before_anything_loads(tmp_path, monkeypatch, capsys,
                                                                               flags, named):
    from tinyae.cli import main as tinyae_cli

    monkeypatch.setattr("tinyae.cli.bench.load_models", lambda *a, **k: pytest.fail("models were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["bench", "--teacher", "tiny", "--out", str(tmp_path / "bench"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert named in err, err


def test_the_training_benchmark_crops_the_folder_it_is_given(tmp_path, photos, monkeypatch):
    from PIL import Image

    from tinyae.data.images import load_rgb
    from tinyae.training.throughput import bench_train, format_report

    folder = tmp_path / "jpegs"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        load_rgb(photos / f"{name}.png").resize((1024, 768), Image.BICUBIC).save(folder / f"{name}.jpg")
    monkeypatch.setattr("tinyae.training.throughput.sample_photos", lambda dest: pytest.fail("sample photos used"))
    report = bench_train(resolutions=(32,), batch_size=1, steps=1, adv=False, lpips=False, workdir=tmp_path / "w",
                         data=folder)
    assert report["data"] == str(folder) and f"data {folder};" in format_report(report)
    assert {r["mode"] for r in report["results"]} == {"on the fly", "cache", "cache build"}
