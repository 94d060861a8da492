"""Shared fixtures: small real models and real photos, never the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach the Hub

import pytest
import torch
from diffusers import AutoencoderKL

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
