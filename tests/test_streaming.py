"""Streaming data: tar shards and Hugging Face datasets, deterministic, resumable, split across processes,
with unreadable samples skipped, warned about and counted."""

import io
import tarfile
import warnings

import datasets
import pytest
import torch
import webdataset as wds
from conftest import small_vae
from PIL import Image

from tinyae.config import load_recipe
from tinyae.data.cache import open_cache
from tinyae.data.images import list_images
from tinyae.data.source import cache_recipe, make_train_loader, make_train_source
from tinyae.data.streams import HFRows, HFStream, StreamCrops, TarShards, expand_shards
from tinyae.errors import DataError
from tinyae.models.teacher import load_teacher


def small_pngs(photos, n):
    """`n` small PNG encodings of the sample photos (cropping them stays fast)."""
    files = list_images(photos)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.open(files[i % len(files)]).convert("RGB").resize((72 + 8 * (i % 3), 64)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    """4 shards of 3 samples; shard 1 holds a corrupt jpg, shard 2 a sample without an image."""
    root = tmp_path_factory.mktemp("shards")
    pngs = iter(small_pngs(photos, 12))
    for s in range(4):
        with wds.TarWriter(str(root / f"train-{s:04d}.tar")) as writer:
            for j in range(3):
                key = f"s{s}-{j}"
                if (s, j) == (1, 1):
                    writer.write({"__key__": key, "jpg": b"\xff\xd8 not really a jpeg"})
                elif (s, j) == (2, 0):
                    writer.write({"__key__": key, "txt": "a caption and no image"})
                else:
                    writer.write({"__key__": key, "png": next(pngs), "txt": "caption"})
    return root


def tar_recipe(path, **extra):
    tokens = ["--data", str(path), "--resolution", "32", "--data.final_steps", "0", "--data.shuffle_buffer", "4"]
    return load_recipe("smoke", tokens + [t for k, v in extra.items() for t in (f"--{k}", str(v))])


def read(loader):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [b["images"] for b in loader]
    return batches, [str(w.message) for w in caught if "Skipping unreadable" in str(w.message)]


def test_tar_shards_are_found_by_folder_glob_or_brace_pattern(shards):
    names = [f"{shards}/train-{s:04d}.tar" for s in range(4)]
    assert expand_shards(str(shards)) == names
    assert expand_shards(f"{shards}/train-*.tar") == names
    assert expand_shards(f"{shards}/train-{{0000..0003}}.tar") == names
    with pytest.raises(DataError, match="No tar shard at"):
        expand_shards(f"{shards}/train-{{0000..0009}}.tar")


def test_a_tar_stream_skips_warns_and_counts_unreadable_samples(shards):
    source = make_train_source(tar_recipe(shards))
    assert source.kind == "tar"
    stream = source.stream(32, 4, seed=0, num_steps=5)  # 20 crops: two passes over 10 readable samples
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [b["images"] for b in stream]
    skipped = [str(w.message) for w in caught if "Skipping unreadable" in str(w.message)]
    assert len(batches) == 5 and all(b.shape == (4, 3, 32, 32) for b in batches)
    assert all(b.min() >= -1 and b.max() <= 1 and b.std() > 0.05 for b in batches)  # real photo crops
    assert stream.bad == len(skipped) >= 3  # 2 bad records a pass, at least 2 passes (the last one partly)
    assert any("s1-1" in m for m in skipped) and any("s2-0" in m and "no image" in m for m in skipped)


def test_a_tar_stream_resumes_mid_run_with_the_same_batches_with_and_without_workers(shards):
    source = make_train_source(tar_recipe(shards))
    full, _ = read(make_train_loader(source, 32, 3, seed=0, num_steps=7))
    for start in (1, 2, 5):  # a resume can land right on a corrupt record's slot
        resumed, _ = read(make_train_loader(source, 32, 3, seed=0, start_step=start, num_steps=7 - start))
        assert all(torch.equal(a, b) for a, b in zip(full[start:], resumed))
    with_workers, _ = read(make_train_loader(source, 32, 3, seed=0, num_steps=6, num_workers=2))
    resumed, _ = read(make_train_loader(source, 32, 3, seed=0, start_step=3, num_steps=3, num_workers=2))
    assert len(with_workers) == 6 and all(torch.equal(a, b) for a, b in zip(with_workers[3:], resumed))


def test_processes_read_disjoint_shards_or_disjoint_examples(shards):
    reader = TarShards(expand_shards(str(shards)), seed=0, shuffle_buffer=4)
    names = lambda part, parts: {name for name, _ in reader.epoch(part, parts, epoch=0)}  # noqa: E731
    everything = names(0, 1)
    assert len(everything) == 12
    for parts in (2, 3, 8):  # by shard while there are enough shards, then by example
        split = [names(p, parts) for p in range(parts)]
        assert set().union(*split) == everything and sum(map(len, split)) == 12
    rank0 = read(make_train_loader(make_train_source(tar_recipe(shards)), 32, 2, 0, num_steps=2, world_size=2))[0]
    rank1 = read(make_train_loader(make_train_source(tar_recipe(shards)), 32, 2, 0, num_steps=2, rank=1,
                                   world_size=2))[0]
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))


def test_a_truncated_shard_is_skipped_with_a_warning(shards, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for s in (0, 3):
        (broken / f"train-{s:04d}.tar").write_bytes((shards / f"train-{s:04d}.tar").read_bytes())
    with tarfile.open(shards / "train-0001.tar") as tar:
        member = tar.getmember("s1-2.png")
    cut = member.offset_data + member.size // 2  # a copy killed halfway through an image
    (broken / "train-0001.tar").write_bytes((shards / "train-0001.tar").read_bytes()[:cut])
    reader = TarShards(expand_shards(str(broken)), seed=0, shuffle_buffer=0)
    with pytest.warns(UserWarning, match="unreadable tar shard"):
        names = [name for name, _ in reader.epoch(0, 1, 0)]
    assert reader.errors == 1 and not any("s1-2" in n for n in names)  # no half image reaches training
    assert sum("train-0000" in n for n in names) == 3 and sum("train-0003" in n for n in names) == 3
    crops = torch.stack(list(StreamCrops(reader, 32, 2).take(0, 6)))
    assert crops.shape == (6, 3, 32, 32)


def hf_rows(photos):
    images = [{"bytes": b, "path": None} for b in small_pngs(photos, 6)]
    images.insert(2, {"bytes": b"GIF89a broken", "path": None})
    return datasets.Dataset.from_dict({"image": images, "caption": [f"c{i}" for i in range(7)]}).cast_column(
        "image", datasets.Image())


def test_a_saved_hugging_face_dataset_is_read_by_sample_index_skipping_a_corrupt_row(photos, tmp_path):
    hf_rows(photos).save_to_disk(str(tmp_path / "saved"))
    source = make_train_source(tar_recipe(tmp_path / "saved"))
    assert source.kind == "hf" and len(source.rows) == 7
    rows = HFRows(source.rows, "image", 32, seed=0)
    with pytest.warns(UserWarning, match="Skipping unreadable row 2"):
        crops = [rows[i] for i in range(12)]
    assert rows.bad == {2} and all(c.shape == (3, 32, 32) for c in crops)
    first, _ = read(make_train_loader(source, 32, 4, seed=0, num_steps=3))
    again, _ = read(make_train_loader(source, 32, 4, seed=0, start_step=1, num_steps=2))
    assert all(torch.equal(a, b) for a, b in zip(first[1:], again))
    with pytest.raises(DataError, match="no column 'pixels'"):
        HFRows(source.rows, "pixels", 32)


def test_a_streamed_hugging_face_dataset_from_local_files_skips_a_corrupt_image(photos, tmp_path):
    folder = tmp_path / "imagefolder"  # load_dataset(folder, streaming=True) reads it as an imagefolder
    folder.mkdir()
    for i, png in enumerate(small_pngs(photos, 5)):
        (folder / f"img{i}.png").write_bytes(png)
    (folder / "img9.png").write_bytes(b"\x89PNG truncated")
    recipe = tar_recipe(folder, **{"data.format": "hf-stream"})
    source = make_train_source(recipe)
    assert isinstance(source.reader, HFStream)
    batches, skipped = read(make_train_loader(source, 32, 3, seed=0, num_steps=4))  # 12 crops: >2 passes
    assert len(batches) == 4 and all(b.shape == (3, 3, 32, 32) for b in batches)
    assert len(skipped) >= 2 and all("cannot identify image" in m for m in skipped)
    resumed, _ = read(make_train_loader(source, 32, 3, seed=0, start_step=2, num_steps=2))
    assert all(torch.equal(a, b) for a, b in zip(batches[2:], resumed))
    parts = [{str(payload) for _, payload in source.reader.epoch(p, 2, 0)} for p in (0, 1)]
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 6


def test_a_cache_built_from_a_stream_holds_the_crops_training_would_stream(shards, tmp_path):
    small_vae().save_pretrained(tmp_path / "vae")
    recipe = tar_recipe(shards, teacher=tmp_path / "vae")
    with pytest.warns(UserWarning, match="Skipping unreadable sample"):  # the same skips as training
        cache_recipe(recipe, tmp_path / "cache", samples=10, shard_size=4, batch_size=5, show_progress=False)
    cache = open_cache(tmp_path / "cache", load_teacher(str(tmp_path / "vae")), 32)
    streamed, _ = read(make_train_loader(make_train_source(recipe), 32, 5, seed=recipe.train.seed, num_steps=2))
    assert torch.equal(torch.cat(streamed), torch.stack([cache[i]["images"] for i in range(10)]))
