"""Teacher cache: the crops and latents training would compute, stored once, refused when they no longer apply."""


import pytest
import torch
from conftest import small_vae

import tinyae.data.cache
from tinyae.cli import main as tinyae_cli
from tinyae.config import load_recipe
from tinyae.data.cache import TeacherCache, open_cache
from tinyae.data.source import cache_recipe, make_train_loader, make_train_source
from tinyae.errors import DataError
from tinyae.models.teacher import Teacher, load_teacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "vae"
    small_vae().save_pretrained(path)
    return path


def recipe_for(teacher_dir, photos, **extra):
    overrides = {"teacher": str(teacher_dir), "data": str(photos), "resolution": 32, "data.holdout": 2,
                 "data.final_steps": 0, "batch_size": 3, "steps": 4} | extra
    tokens = [t for key, value in overrides.items() for t in (f"--{key}", str(value))]
    return load_recipe("smoke", tokens)


@pytest.fixture(scope="module")
def built(teacher_dir, photos, tmp_path_factory):
    """A 10-sample cache in shards of 4, with teacher reconstructions."""
    out = tmp_path_factory.mktemp("caches") / "c32"
    cache_recipe(recipe_for(teacher_dir, photos), out, samples=10, shard_size=4, with_targets=True, batch_size=3,
                 show_progress=False)
    return out


def test_cached_batches_are_the_on_the_fly_crops_and_teacher_outputs(built, teacher_dir, photos):
    teacher = load_teacher(str(teacher_dir))
    on_the_fly = make_train_source(recipe_for(teacher_dir, photos))
    cached = make_train_source(recipe_for(teacher_dir, photos, **{"data.cache": built}), teacher)
    assert set(cached.caches) == {32}
    fresh = list(make_train_loader(on_the_fly, 32, 3, seed=0, num_steps=3))
    from_cache = list(make_train_loader(cached, 32, 3, seed=0, num_steps=3))  # samples 0..8 of 10
    for a, b in zip(fresh, from_cache):
        assert set(b) == {"images", "latents", "targets"}
        assert torch.equal(a["images"], b["images"])  # uint8 storage of uint8-born crops is lossless
        latents = teacher.encode(a["images"])
        assert torch.allclose(b["latents"], latents, atol=1e-5)
        reconstruction = teacher.decode(latents).clamp(-1, 1)
        assert (b["targets"] - reconstruction).abs().max() <= 0.5 / 127.5 + 1e-5  # rounded to 8 bits


def test_processes_read_disjoint_cache_samples_and_indices_wrap_around(built, teacher_dir, photos):
    teacher = load_teacher(str(teacher_dir))
    source = make_train_source(recipe_for(teacher_dir, photos, **{"data.cache": built}), teacher)
    cache = source.caches[32]
    rank0 = next(iter(make_train_loader(source, 32, 3, seed=0, rank=0, world_size=2)))
    rank1 = next(iter(make_train_loader(source, 32, 3, seed=0, rank=1, world_size=2)))
    assert torch.equal(rank0["images"], torch.stack([cache[i]["images"] for i in (0, 1, 2)]))
    assert torch.equal(rank1["images"], torch.stack([cache[i]["images"] for i in (3, 4, 5)]))
    assert torch.equal(cache[13]["latents"], cache[3]["latents"])  # sample j reads j mod 10


def test_a_cache_for_another_teacher_resolution_or_factors_is_refused(built):
    same = Teacher(small_vae(), 0.5, 0.1, name="other-name")
    assert len(open_cache(built, same, 32).shards) == 3  # the same weights and factors under another name
    with pytest.raises(DataError, match="was built with teacher"):
        open_cache(built, Teacher(small_vae(seed=1), 0.5, 0.1), 32)
    with pytest.raises(DataError, match="was built with teacher"):
        open_cache(built, Teacher(small_vae(), 0.7, 0.1), 32)
    with pytest.raises(DataError, match="holds 32 px crops but training asks for 64 px"):
        open_cache(built, same, 64)
    with pytest.raises(DataError, match="posterior means"):
        open_cache(built, Teacher(small_vae(), 0.5, 0.1, sample=True), 32)


def test_a_recipe_refuses_a_cache_for_another_teacher_before_training(built, photos, tmp_path):
    other = tmp_path / "other"
    small_vae(seed=3).save_pretrained(other)
    recipe = recipe_for(other, photos, **{"data.cache": built})
    with pytest.raises(DataError, match="Rebuild it with `tinyae cache-latents`"):
        make_train_source(recipe, load_teacher(str(other)))


def test_an_interrupted_build_resumes_and_ends_identical_to_an_uninterrupted_one(built, teacher_dir, photos,
                                                                                  tmp_path, monkeypatch):
    recipe = recipe_for(teacher_dir, photos)
    out = tmp_path / "resumed"
    real_build_shard, calls = tinyae.data.cache.build_shard, []

    def killed_on_third_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_build_shard(*args, **kwargs)

    monkeypatch.setattr(tinyae.data.cache, "build_shard", killed_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        cache_recipe(recipe, out, samples=10, shard_size=4, with_targets=True, batch_size=3, show_progress=False)
    monkeypatch.setattr(tinyae.data.cache, "build_shard", real_build_shard)
    # What a kill can leave: a half-written temporary file, and a shard renamed into place whose receipt is missing.
    (out / ".shard-000002.safetensors.tmp-999").write_bytes(b"half a shard")
    (out / "shard-000001.json").unlink()
    with pytest.raises(DataError, match="unfinished"):
        TeacherCache(out)

    rebuilt = []
    monkeypatch.setattr(tinyae.data.cache, "build_shard", lambda *a, **k: rebuilt.append(a[1]) or real_build_shard(*a, **k))
    cache_recipe(recipe, out, samples=10, shard_size=4, with_targets=True, batch_size=3, show_progress=False)
    assert rebuilt == [1, 2]  # shard 0 was finished and is kept
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in built.iterdir())
    for path in built.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_damaged_shard_never_reads_as_valid(built, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(built, damaged)
    shard = damaged / "shard-000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, one pixel flipped
    shard.write_bytes(bytes(data))
    cache = TeacherCache(damaged)
    assert cache[0]["images"].shape == (3, 32, 32)  # other shards still read
    with pytest.raises(DataError, match="does not match the sha256"):
        cache[5]
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataError, match="missing or truncated"):
        TeacherCache(damaged)


def test_the_script_refuses_a_folder_holding_another_cache(built, teacher_dir, photos, capsys):
    args = ["cache-latents", "--recipe", "smoke", "--teacher", str(teacher_dir), "--data", str(photos), "--resolution", "64",
            "--data.final_steps", "0", "--out", str(built), "--samples", "10"]
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other settings" in err and "resolution" in err
    tinyae_cli(["cache-latents", "--verify", "--out", str(built)])
    assert "10 samples, every shard matches its sha256" in capsys.readouterr().out


def test_the_training_benchmark_times_both_sources_from_one_run(tmp_path, monkeypatch):
    from tinyae.training.throughput import bench_train, format_report

    encoded = []
    real_encode = Teacher.encode
    monkeypatch.setattr(Teacher, "encode", lambda self, images, **kw: encoded.append(len(images)) or
                        real_encode(self, images, **kw))
    report = bench_train(resolutions=(32,), batch_size=1, steps=1, adv=False, lpips=False, workdir=tmp_path)
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"on the fly", "cache", "cache build"}
    assert set(rows["cache"]["seconds_per_image"]) == {"data", "teacher", "student", "disc"}
    # Two crops encoded once for the cache, then once more by the two on-the-fly steps; never by cached steps.
    assert encoded == [1, 1, 1, 1]
    assert (tmp_path / "cache-32" / "index.json").exists()
    assert "32 px: the cache trains" in format_report(report)
