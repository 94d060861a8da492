"""Training images: recursive folders, deterministic crops, bad files skipped and counted."""

import warnings

import pytest
import torch
from PIL import Image

from tinyae.data.folder import RandomCrops, StepSampler, split_holdout
from tinyae.data.images import CropPolicy, from_uint8, list_images, random_crop, scan_images, to_tensor, to_uint8
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
    with pytest.raises(DataError, match="no jpg, jpeg, png or webp"):
        list_images(tmp_path / "empty")


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
