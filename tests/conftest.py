"""Shared fixtures: small real models and real photos, never the network."""

import builtins
import errno
import io
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach the Hub

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError

from tinyae.config import StudentConfig
from tinyae.data.images import sample_photos
from tinyae.models.teacher import Teacher

torch.set_num_threads(2)


def small_vae(latent_channels: int = 4, seed: int = 0) -> AutoencoderKL:
    """An f8 AutoencoderKL small enough to run in milliseconds on a CPU."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        scaling_factor=0.5,
        shift_factor=0.1,
    ).eval()


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """scikit-image's colour photos as a folder of PNGs."""
    return sample_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def small_teacher():
    return Teacher(small_vae(), scaling_factor=0.5, shift_factor=0.1, name="small")


@pytest.fixture
def small_student_config():
    return StudentConfig(latent_channels=4, encoder_widths=[16], decoder_widths=[16],
                         encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder)` makes writes under `folder` fail as on a read-only directory (EACCES).

    The tests run as root, where chmod stops nothing, so the calls that create or replace
    files (os.open, open, mkdir, replace, rename) are refused for paths under the folder.
    """
    roots: list[str] = []

    def denied(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        full = os.path.abspath(os.fsdecode(path))
        return any(full == root or full.startswith(root + os.sep) for root in roots)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir
    real_replace, real_rename = os.replace, os.rename

    def os_open(path, flags, *args, **kwargs):
        if denied(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if denied(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if denied(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def moving(real):
        def move(src, dst, *args, **kwargs):
            if denied(src) or denied(dst):
                refuse(dst)
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", moving(real_replace))
    monkeypatch.setattr(os, "rename", moving(real_rename))

    def make(folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        roots.append(os.path.abspath(folder))
        return folder

    return make


# A full disk, as torch and safetensors report it (measured on a full tmpfs): half a file, then the error.
def torch_save_on_a_full_disk(obj, f, *args, **kwargs):
    if hasattr(f, "write"):  # a buffer (tinyae.utils.weights.save_pth)
        f.write(b"PK\x03\x04 half a torch archive")
    else:
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a torch archive")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def save_file_on_a_full_disk(tensors, filename, *args, **kwargs):
    with open(filename, "wb") as out:
        out.write(b"\x10\x00 half a safetensors file")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
