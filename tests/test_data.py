"""Training images: recursive folders, deterministic crops, bad files skipped and counted."""

import shutil
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tinyae.data import images as images_module
from tinyae.data.folder import RandomCrops, StepSampler, split_holdout
from tinyae.data.images import (
    CropPolicy,
    decode_image,
    decoded,
    from_uint8,
    list_images,
    load_rgb,
    random_crop,
    scan_images,
    to_tensor,
    to_uint8,
)
from tinyae.data.source import make_train_loader
from tinyae.errors import DataError


@pytest.fixture
def mixed_folder(tmp_path, photos):
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    img = Image.open(photos / "astronaut.png").convert("RGB").resize((80, 60))
    img.save(root / "one.jpg")
    img.save(root / "a" / "two.JPEG")
    img.convert("L").save(root / "a" / "b" / "gray.png")
    img.save(root / "a" / "b" / "three.webp")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "a" / "empty.jpg").write_bytes(b"")
    return root


def test_images_are_found_recursively_by_extension(mixed_folder):
    names = {p.name for p in list_images(mixed_folder)}
    assert names == {"one.jpg", "two.JPEG", "gray.png", "three.webp", "broken.png", "empty.jpg"}


def test_corrupt_files_are_skipped_with_one_warning_each_and_counted(mixed_folder):
    with pytest.warns(UserWarning) as record:
        good, bad = scan_images(mixed_folder)
    assert {p.name for p in bad} == {"broken.png", "empty.jpg"}
    assert len(good) == 4
    assert len([w for w in record if "Skipping unreadable image" in str(w.message)]) == 2


def test_a_file_that_breaks_later_is_skipped_once_during_training(tmp_path, photos):
    files = [photos / "astronaut.png", tmp_path / "gone.png"]
    Image.new("RGB", (64, 64)).save(files[1])
    crops = RandomCrops(files, 32)
    files[1].write_bytes(b"corrupted after the scan")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        batch = [crops[i] for i in range(12)]
    assert all(x.shape == (3, 32, 32) for x in batch)
    assert len([w for w in record if "gone.png" in str(w.message)]) == 1


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no jpg, jpeg, png, webp, tif, tiff, bmp or gif"):
        list_images(tmp_path / "empty")


def test_bmp_and_gif_images_are_read_like_the_others(tmp_path, photos):
    img = Image.open(photos / "astronaut.png").convert("RGB").resize((80, 60))
    img.save(tmp_path / "a.bmp")
    img.save(tmp_path / "b.gif")
    good, bad = scan_images(tmp_path)
    assert [p.name for p in good] == ["a.bmp", "b.gif"] and bad == []
    assert load_rgb(tmp_path / "b.gif").size == (80, 60)


@pytest.mark.parametrize("path", ["/missing", "/no/such/folder", "./missing", "missing"])
def test_a_data_path_that_does_not_exist_is_named_as_missing(tmp_path, path):
    from tinyae.data.source import detect_format

    with pytest.raises(DataError, match=f"'{path}' does not exist"):
        detect_format(path)


def test_grayscale_images_become_rgb_crops_in_range(mixed_folder):
    crops = RandomCrops([mixed_folder / "a" / "b" / "gray.png"], 48)
    x = crops[0]
    assert x.shape == (3, 48, 48) and x.min() >= -1 and x.max() <= 1


def test_a_sample_is_a_pure_function_of_seed_and_index(photos):
    files = list_images(photos)
    a, b = RandomCrops(files, 64, seed=1), RandomCrops(files, 64, seed=1)
    assert torch.equal(a[5], b[5])
    assert not torch.equal(a[5], a[6])
    assert not torch.equal(a[5], RandomCrops(files, 64, seed=2)[5])


def test_ranks_read_disjoint_indices_and_a_resume_continues_the_same_stream():
    take = lambda sampler, n: [i for _, i in zip(range(n), sampler)]  # noqa: E731
    r0, r1 = take(StepSampler(4, rank=0, world_size=2), 12), take(StepSampler(4, rank=1, world_size=2), 12)
    assert not set(r0) & set(r1)
    full = take(StepSampler(4), 20)
    assert take(StepSampler(4, start_step=3), 8) == full[12:20]


def test_the_loader_yields_batches_of_a_step_range(photos):
    files = list_images(photos)
    batches = [b["images"] for b in make_train_loader(files, 32, 3, seed=0, start_step=0, num_steps=4)]
    resumed = [b["images"] for b in make_train_loader(files, 32, 3, seed=0, start_step=2, num_steps=2)]
    assert len(batches) == 4 and batches[0].shape == (3, 3, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(batches[2:], resumed))


def test_held_out_images_are_deterministic_and_disjoint(photos):
    files = list_images(photos)
    train, held = split_holdout(files, 2)
    assert len(held) == 2 and not set(train) & set(held) and len(train) + 2 == len(files)
    assert split_holdout(files, 2) == (train, held)
    with pytest.raises(DataError, match="hold out"):
        split_holdout(files, len(files))


def test_colour_augmentation_touches_only_its_share_of_crops_and_is_reproducible(photos):
    files = list_images(photos)
    plain = RandomCrops(files, CropPolicy(32), seed=3)
    jittered = RandomCrops(files, CropPolicy(32, color_aug=0.5), seed=3)
    changed = [not torch.equal(plain[i], jittered[i]) for i in range(40)]
    assert 8 < sum(changed) < 32  # about half of the crops; the others are the very same crop
    again = RandomCrops(files, CropPolicy(32, color_aug=0.5), seed=3)
    assert all(torch.equal(jittered[i], again[i]) for i in range(10))  # a pure function of (seed, index)
    x = jittered[next(i for i, c in enumerate(changed) if c)]
    assert torch.equal(from_uint8(to_uint8(x)), x)  # still 8-bit, so a teacher cache stores it exactly


def test_any_scale_crops_range_from_native_detail_to_the_whole_image(photos):
    """Seraena draws the crop side from the training size up to the image's short side (data.crop_scale any)."""
    image = Image.open(photos / "astronaut.png").convert("RGB")  # 512 x 512
    native = [to_tensor(image.crop((x, y, x + 32, y + 32))) for x in range(0, 481, 32) for y in range(0, 481, 32)]
    thumbnail = to_tensor(image.resize((32, 32), Image.BICUBIC))

    def closest(policy, reference):
        crops = [random_crop(image, policy, torch.Generator().manual_seed(i)) for i in range(300)]
        return min(min((c - r).abs().mean().item() for r in reference) for c in crops)

    any_scale, zoom = CropPolicy(32, hflip=False, scale="any"), CropPolicy(32, hflip=False)
    assert closest(any_scale, native) < 0.02 and closest(any_scale, [thumbnail]) < 0.05  # both ends occur
    assert closest(zoom, native) > 0.05  # zoom crops of a big image never show native-resolution detail


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory, photos):
    path = tmp_path_factory.mktemp("big") / "astronaut.jpg"
    load_rgb(photos / "astronaut.png").resize((2048, 1536), Image.BICUBIC).save(path, quality=95)
    return path


@pytest.mark.parametrize("scale", ["any", "zoom"])
def test_a_jpeg_is_decoded_only_at_the_scale_its_crop_needs_and_gives_the_same_crop(big_jpeg, monkeypatch, scale):
    policy, sizes = CropPolicy(32, scale=scale, color_aug=0.5), []

    def watched(img, at_least):
        out = decoded(img, at_least)
        sizes.append(out.size)
        return out

    full = [random_crop(load_rgb(big_jpeg), policy, torch.Generator().manual_seed(i)) for i in range(12)]
    monkeypatch.setattr("tinyae.data.images.decoded", watched)
    reduced = [random_crop(Image.open(big_jpeg), policy, torch.Generator().manual_seed(i)) for i in range(12)]
    assert (256, 192) in sizes and all(w <= 2048 for w, _ in sizes)  # most at 1/8 scale, none larger than the file
    for a, b in zip(full, reduced):  # the same square of the photo (same draws, flips, jitter), resampled
        assert (a - b).abs().mean().item() < 0.02


def test_an_image_that_fails_while_cropped_leaves_its_draws_to_the_next_one(tmp_path, photos):
    files = [tmp_path / "good.jpg", tmp_path / "truncated.jpg"]
    load_rgb(photos / "astronaut.png").save(files[0])
    load_rgb(photos / "coffee.png").save(files[1])
    files[1].write_bytes(files[1].read_bytes()[:4000])  # the header reads, the pixels do not
    crops = RandomCrops(files, CropPolicy(32, scale="any"), seed=0)
    index = next(i for i in range(100) if int(torch.randint(0, 2, (), generator=torch.Generator().manual_seed(i))))
    with pytest.warns(UserWarning, match="truncated.jpg"):
        crop = crops[index]
    gen = torch.Generator().manual_seed(index)
    torch.randint(0, 2, (), generator=gen)  # the choice of image
    assert torch.equal(crop, random_crop(Image.open(files[0]), CropPolicy(32, scale="any"), gen))


def test_processes_of_a_launch_split_the_start_up_scan_and_all_learn_the_whole_result(tmp_path, photos, monkeypatch):
    folder = tmp_path / "imgs"
    shutil.copytree(photos, folder)
    load_rgb(photos / "astronaut.png").resize((16, 16)).save(folder / "tiny.png")  # smaller than the crop
    with pytest.warns(UserWarning, match="tiny.png 16x16"):
        alone = scan_images(folder, 32)
    checked, lock = [], threading.Lock()
    real_check = images_module._check_readable

    def counted(path):
        with lock:
            checked.append(path.name)
        return real_check(path)

    monkeypatch.setattr(images_module, "_check_readable", counted)
    found, barrier, results = [None, None], threading.Barrier(2), [None, None]

    def rank(r):
        def share(mine):  # an all-gather between two "processes"
            found[r] = mine
            barrier.wait()
            return list(found)
        results[r] = scan_images(folder, 32, r, 2, share)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-image warning, raised in both threads
        threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results[0] == results[1] == alone
    assert sorted(checked) == sorted(p.name for p in folder.iterdir())  # each file read once, by one process


# ---------------------------------------------------------------- 16-bit and float pixels, symlinks, truncation

RAMP = np.linspace(0, 65535, 64 * 48).reshape(48, 64).round().astype(np.uint16)  # every 16-bit level range


def png16_rgb(path, rgb):
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2, unfiltered rows."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


RGB16 = np.stack([RAMP, RAMP // 2, 65535 - RAMP], -1)
WRITERS = {  # name -> (writer, the 8-bit RGB the file means)
    "gray16.png": (lambda p: Image.fromarray(RAMP).save(p), np.stack([RAMP / 257] * 3, -1)),  # mode I;16
    "gray16.tif": (lambda p: tifffile.imwrite(p, RAMP), np.stack([RAMP / 257] * 3, -1)),
    "gray16_big_endian.tif": (lambda p: tifffile.imwrite(p, RAMP.astype(">u2")), np.stack([RAMP / 257] * 3, -1)),
    "gray32.tif": (lambda p: tifffile.imwrite(p, RAMP.astype(np.int32)), np.stack([RAMP / 257] * 3, -1)),  # mode I
    "float.tif": (lambda p: tifffile.imwrite(p, (RAMP / 65535).astype(np.float32)),
                  np.stack([RAMP / 257] * 3, -1)),  # mode F in [0, 1]
    "rgb16.png": (lambda p: png16_rgb(p, RGB16), RGB16 / 257),
    "rgb16.tif": (lambda p: tifffile.imwrite(p, RGB16, photometric="rgb"), RGB16 / 257),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped(tmp_path, name):
    write, expected = WRITERS[name]
    write(tmp_path / name)
    good, bad = scan_images(tmp_path)
    assert [p.name for p in good] == [name] and bad == []
    pixels = np.asarray(load_rgb(tmp_path / name)).astype(np.float64)
    assert pixels.shape == (48, 64, 3) and np.abs(pixels - expected).max() <= 1.0
    with Image.open(tmp_path / name) as img:  # a decoded image from a dataset is scaled the same way
        img.load()
        assert np.array_equal(np.asarray(decode_image(img)), np.asarray(load_rgb(tmp_path / name)))


def test_pixels_of_unknown_range_are_skipped_with_a_warning_and_counted(tmp_path, photos):
    Image.open(photos / "astronaut.png").save(tmp_path / "ok.png")
    tifffile.imwrite(tmp_path / "hdr.tif", (RAMP / 65535 * 16).astype(np.float32))  # float pixels up to 16
    tifffile.imwrite(tmp_path / "float_rgb.tif", (RGB16 / 65535).astype(np.float32), photometric="rgb")
    with pytest.warns(UserWarning) as record:
        good, bad = scan_images(tmp_path)
    assert [p.name for p in good] == ["ok.png"] and sorted(p.name for p in bad) == ["float_rgb.tif", "hdr.tif"]
    messages = " ".join(str(w.message) for w in record)
    assert "hdr.tif" in messages and "float pixels in [0, 16" in messages and "float_rgb.tif" in messages


def test_a_truncated_jpeg_is_counted_as_unreadable_at_the_scan(tmp_path, photos):
    Image.open(photos / "astronaut.png").convert("RGB").save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "trailing.jpg").write_bytes(data + b"\x00" * 16)  # junk after the end marker still decodes
    with pytest.warns(UserWarning, match="cut.jpg.*truncated"):
        good, bad = scan_images(tmp_path)
    assert [p.name for p in good] == ["trailing.jpg", "whole.jpg"] and [p.name for p in bad] == ["cut.jpg"]


def test_folders_reached_through_symlinks_are_searched_and_loops_are_not_followed(tmp_path, photos):
    elsewhere = tmp_path / "disk2" / "set1"
    elsewhere.mkdir(parents=True)
    shutil.copy(photos / "astronaut.png", elsewhere / "a.png")
    shutil.copy(photos / "coffee.png", elsewhere / "b.png")
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(photos / "chelsea.png", root / "c.png")
    (root / "set1").symlink_to(elsewhere, target_is_directory=True)
    (root / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice: read once
    (elsewhere / "up").symlink_to(root, target_is_directory=True)  # a loop back to the root
    with pytest.warns(UserWarning, match="already searched"):
        files = list_images(root)
    assert [str(p.relative_to(root)) for p in files] == ["again/a.png", "again/b.png", "c.png"]


def test_images_smaller_than_the_crop_are_named_not_upscaled_silently(tmp_path, photos):
    Image.open(photos / "astronaut.png").convert("RGB").resize((80, 60)).save(tmp_path / "big.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (1000, 8)).save(tmp_path / "strip.png")
    with pytest.warns(UserWarning, match=r"2 of 3 images under .* are smaller than the 32 px crop.*dot.png 1x1"):
        good, bad = scan_images(tmp_path, crop=32)
    assert len(good) == 3 and bad == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_images(tmp_path)  # no crop size: nothing to say


def test_a_data_folder_that_cannot_be_read_is_one_sentence(tmp_path, monkeypatch):
    from tinyae.data import source

    def denied(path):  # what a mode-000 folder does to a non-root user (the tests run as root)
        raise PermissionError(13, "Permission denied", str(tmp_path / "state.json"))

    monkeypatch.setattr(source, "is_saved_dataset", denied)
    with pytest.raises(DataError, match=r"Cannot read .*state.json': permission denied"):
        source.detect_format(str(tmp_path))
    monkeypatch.setattr("tinyae.data.images.os.walk", lambda root, **kw: kw["onerror"](
        PermissionError(13, "Permission denied", str(root))) or iter(()))
    with pytest.raises(DataError, match=r"Cannot read image folder .*: permission denied"):
        list_images(tmp_path)


def test_images_beside_videos_are_named_as_unused_and_bad_videos_counted(tmp_path, photos, caplog):
    av = pytest.importorskip("av")
    from tests.test_clips import write_video
    from tinyae.config import load_recipe
    from tinyae.data.source import make_train_source

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_video(folder / "a.mkv", 12, size=(72, 72))
    write_video(folder / "b.mkv", 12, size=(72, 72))
    write_video(folder / "short.mkv", 2, size=(72, 72))
    shutil.copy(next(photos.glob("*.png")), folder / "photo.png")
    recipe = load_recipe("video-smoke", {"data": {"path": str(folder), "holdout": 1, "resolution": 64}})
    with caplog.at_level("WARNING"), pytest.warns(UserWarning, match="short.mkv"):
        source = make_train_source(recipe)
    assert "holds 3 video files and 1 images: training on the videos only" in caplog.text
    assert source.kind == "videos" and source.n_bad == 1 and len(source.files) + len(source.heldout) == 2
    assert "1 unreadable or too short skipped" in source.describe()
    assert av is not None


def test_an_image_teacher_refuses_clip_settings_rather_than_record_them(photos):
    from tinyae.config import load_recipe
    from tinyae.data.source import make_train_source
    from tinyae.errors import ConfigError

    recipe = load_recipe("smoke", {"data": {"path": str(photos), "frames": 5}})
    with pytest.raises(ConfigError, match="data.frames shape a video teacher's clips, but 'tiny' is an image VAE"):
        make_train_source(recipe)
