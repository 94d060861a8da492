"""Sample grids written during training, to see a run's progress at a glance (and in TensorBoard)."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from tinyae.data.images import to_pil
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher
from tinyae.utils.atomic import atomic_file


@torch.no_grad()
def sample_grid(student: Student, teacher: Teacher, images: torch.Tensor) -> torch.Tensor:
    """Rows of input | teacher round trip | student decoder on teacher latents | student round trip."""
    latents = teacher.encode(images)
    device = next(student.parameters()).device
    columns = [images.cpu(), teacher.decode(latents).cpu(), student.decode(latents.to(device)).float().cpu(),
               student.decode(student.encode(images.to(device))).float().cpu()]
    rows = torch.stack(columns, dim=1).clamp(-1, 1)  # (N, 4, 3, H, W)
    n, k, c, h, w = rows.shape
    return rows.permute(2, 0, 3, 1, 4).reshape(c, n * h, k * w)


def save_sample(accelerator: Accelerator, out: Path, step: int, grid: torch.Tensor) -> Path:
    """samples/step-NNNNNNN.png, and the same grid to TensorBoard."""
    path = out / "samples" / f"step-{step:07d}.png"
    atomic_file(path, lambda tmp: to_pil(grid).save(tmp, format="png"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": grid[None].add(1).div(2).clamp(0, 1).numpy()}, step=step)
    return path
