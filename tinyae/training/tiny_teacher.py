"""A small real teacher: a ~4M-parameter AutoencoderKL trained on CPU, shipped in weights/tiny-teacher.

The big teachers (SD, SDXL, FLUX) need the Hub and a GPU. The smoke recipe,
the tests and first-time users need a teacher that is real (trained on photos,
with a proper KL posterior and a data-estimated scaling factor) yet loads
offline and encodes a batch in a fraction of a second on a laptop CPU. This
module trains one: an f8, 4-channel AutoencoderKL like SD's, only narrower,
with one resnet per stage and no mid-block attention.

The recipe is the latent-diffusion one, shrunk: L1 reconstruction, a small KL
term (mean over latent elements, so its weight does not depend on crop size),
optional LPIPS, Adam with warmup and cosine decay. After training,
scaling_factor = 1 / std(posterior means) over the training photos, exactly as
SD's 0.18215 was chosen. shift_factor stays 0 unless the latent mean is more
than SHIFT_THRESHOLD standard deviations away from 0: SD-style pipelines
ignore shift_factor, so a shift is only worth having when it is large.

`train_small_video_vae` makes the video counterpart, weights/tiny-wan: an AutoencoderKLWan of
Wan 2.1's layout at width 8, trained on pan-and-zoom clips of photos, with per-channel latent
statistics (the config's latents_mean / latents_std) measured the same way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderKLWan
from torch.utils.data import DataLoader

from tinyae.config import MAX_BATCH, MAX_FRAMES, MAX_RESOLUTION, MIN_RESOLUTION, check_range
from tinyae.data.clips import ClipPolicy, PhotoClips
from tinyae.data.folder import RandomCrops, StepSampler, split_holdout
from tinyae.data.images import CropPolicy, list_images, load_eval_images, scan_images
from tinyae.errors import ConfigError, DataError, ExportError
from tinyae.evaluation import metrics as image_metrics
from tinyae.evaluation.factors import as_teacher, estimate_factors
from tinyae.evaluation.lpips import lpips_distance
from tinyae.utils.atomic import EXISTS, atomic_folder

logger = logging.getLogger(__name__)

# Picked by measuring encode/decode speed on a 2-core CPU (weights/tiny-teacher/README.md).
TINY_TEACHER_ARCH = dict(
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    mid_block_add_attention=False,
)

SHIFT_THRESHOLD = 0.2  # |mean| / std above which the latent mean becomes shift_factor


def build_small_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL with the tiny-teacher architecture (or overrides)."""
    torch.manual_seed(seed)
    return AutoencoderKL(**{**TINY_TEACHER_ARCH, **overrides})


def choose_factors(vae: AutoencoderKL, images: torch.Tensor | Sequence[torch.Tensor],
                   shift_threshold: float = SHIFT_THRESHOLD) -> tuple[float, float]:
    """(scaling_factor, shift_factor) for the VAE's config, from images in [-1, 1] (one batch or several sizes)."""
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    if not batches or any(b.ndim != 4 or b.shape[0] == 0 for b in batches):
        raise DataError("choose_factors needs non-empty (N, 3, H, W) image batches in [-1, 1].")
    return estimate_factors(vae, batches).choose(shift_threshold)


@torch.no_grad()
def reconstruction_quality(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM (tinyae.evaluation.metrics) of posterior-mean reconstructions, clamped as pipelines do."""
    teacher = as_teacher(vae)
    psnrs, ssims = [], []
    for chunk in images.split(batch_size):
        rec = teacher.decode(teacher.encode(chunk)).clamp(-1, 1)
        psnrs += image_metrics.psnr(rec, chunk).tolist()
        ssims += image_metrics.ssim(rec, chunk).tolist()
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "images": len(psnrs)}


@torch.no_grad()
def measure_codec_speed(vae, batch_size: int = 8, resolution: int = 128, repeats: int = 5) -> dict[str, float]:
    """Seconds to encode (B, 3, R, R) and decode (B, C, R/8, R/8) on the VAE's device: median and best of N."""
    param = next(vae.parameters())
    images = torch.rand(batch_size, 3, resolution, resolution, device=param.device, dtype=param.dtype) * 2 - 1
    latents = torch.randn(batch_size, vae.config.latent_channels, resolution // 8, resolution // 8,
                          device=param.device, dtype=param.dtype)
    out = {}
    for name, fn in (("encode", lambda: vae.encode(images).latent_dist.mean),
                     ("decode", lambda: vae.decode(latents).sample)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[f"{name}_s_median"] = sorted(times)[len(times) // 2]
        out[f"{name}_s_best"] = min(times)
    return out


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warmup over steps, then cosine down to 10 % over `progress` in [0, 1]."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _schedule(optimizer: torch.optim.Optimizer, lr: float, warmup: int, step: int, steps: int, start: float,
              max_minutes: float | None) -> bool:
    """Set this step's learning rate; False once the budget is spent. Progress is the larger of steps done and
    time spent, so a time-limited run still ends its cosine."""
    budget = max_minutes * 60 if max_minutes else math.inf
    progress = max(step / steps, (time.perf_counter() - start) / budget)
    if progress >= 1:
        logger.info("Stopping after %d steps: the %.1f-minute budget is spent", step, max_minutes)
        return False
    for group in optimizer.param_groups:
        group["lr"] = lr * _lr_factor(step, progress, warmup)
    return True


def _update(vae: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> float:
    """One clipped optimizer step on `loss`; its value, or a stop if it is not finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    value = loss.item()
    if not math.isfinite(value):
        raise DataError(f"Training diverged at step {step} (loss {value}); lower the learning rate.")
    return value


def check_teacher_arguments(steps: int, resolution: int, batch_size: int, lr: float, seed: int,
                            eval_resolutions: Sequence[int] = ()) -> None:
    """Refuse, before any photo is read or anything allocated, sizes the VAE cannot take or memory cannot hold."""
    check_range("--steps", steps)
    for option, values in (("--resolution", [resolution]), ("--eval-resolution", eval_resolutions)):
        check_range(option, *values, low=MIN_RESOLUTION, high=MAX_RESOLUTION, multiple=8,
                    why=" (the VAE's latents are 1/8 of it)")
    check_range("--batch-size", batch_size, high=MAX_BATCH)
    check_range("--seed", seed, low=0)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive finite number, got {lr}.")


def train_small_vae(
    data_dir: str | Path,
    out_dir: str | Path,
    steps: int = 3000,
    resolution: int = 96,
    batch_size: int = 8,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    lpips_weight: float = 0.0,
    holdout: int = 6,
    eval_resolutions: Sequence[int] = (64, 128, 256),
    eval_dirs: Sequence[str | Path] = (),
    max_zoom_out: float = 4.0,
    warmup: int = 100,
    seed: int = 0,
    num_workers: int = 0,
    max_minutes: float | None = None,
    precision: str = "fp32",
    time_codec: bool = True,
    log_every: int = 50,
    overwrite: bool = False,
    arch: dict | None = None,
) -> dict:
    """Train a small AutoencoderKL on a photo folder and save it (fp16 safetensors) with its scaling factor.

    Returns the metrics also written to `out_dir/training.json`: losses, steps done,
    scaling/shift factors, held-out PSNR/SSIM per resolution and codec timings.
    `max_minutes` bounds the wall-clock time of training: the learning-rate cosine then follows
    whichever runs out first, steps or minutes, so a CPU run fits its budget and still anneals.
    `precision="bf16"` trains under bf16 autocast in channels_last (about 1.7x faster on an AVX512-bf16
    CPU); weights, evaluation and the saved file do not depend on it. `time_codec` adds encode/decode
    timings of a batch of 8 at 128 px to the metrics.
    """
    check_teacher_arguments(steps, resolution, batch_size, lr, seed, eval_resolutions)
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # fail now, not after the training run
        raise ExportError(f"'{out_dir}' {EXISTS}.")
    files, _ = scan_images(data_dir)
    train_files, held_files = split_holdout(files, holdout)
    eval_sets = {"holdout": held_files} if held_files else {}
    for folder in eval_dirs:
        eval_sets[Path(folder).name] = list_images(folder)

    vae = build_small_vae(seed, **(arch or {})).train()
    bf16 = precision == "bf16"
    if bf16:
        vae = vae.to(memory_format=torch.channels_last)  # oneDNN's bf16 convs are fastest in this layout
    params = sum(p.numel() for p in vae.parameters())
    logger.info("AutoencoderKL with %.2fM parameters; %d training images, %d held out",
                params / 1e6, len(train_files), len(held_files))
    dataset = RandomCrops(train_files, CropPolicy(resolution, max_zoom_out), seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=StepSampler(batch_size, num_steps=steps),
                        num_workers=num_workers)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
    noise = torch.Generator().manual_seed(seed)

    losses: list[float] = []
    start = time.perf_counter()
    for step, images in enumerate(loader):
        if not _schedule(optimizer, lr, warmup, step, steps, start, max_minutes):
            break
        if bf16:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.sample(noise)).sample.float()
        pixel = F.l1_loss(recon, images)
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()  # per latent element
        loss = pixel + kl_weight * kl
        if lpips_weight > 0:
            loss = loss + lpips_weight * lpips_distance(recon, images).mean()
        losses.append(_update(vae, optimizer, loss, step))
        if step % log_every == 0 or step == steps - 1:
            mse = F.mse_loss(recon.detach().clamp(-1, 1), images).item() / 4  # on [0, 1]
            logger.info("step %d/%d loss %.4f l1 %.4f kl %.3f batch-psnr %.2f dB lr %.2e %.2f s/step",
                        step, steps, losses[-1], pixel.item(), kl.item(), -10 * math.log10(max(mse, 1e-10)),
                        optimizer.param_groups[0]["lr"], (time.perf_counter() - start) / (step + 1))

    train_minutes = (time.perf_counter() - start) / 60

    # From here on everything is measured on the weights as shipped: rounded to fp16.
    vae = vae.eval().requires_grad_(False).half().float().to(memory_format=torch.contiguous_format)
    unseen_crops = torch.stack([dataset[2**40 + i] for i in range(64)])  # indices no training step reaches
    factor_images = [load_eval_images(train_files, 128), unseen_crops]
    scaling, shift = choose_factors(vae, factor_images)
    vae.register_to_config(scaling_factor=scaling, shift_factor=shift)

    metrics = {
        "parameters": params,
        "steps": len(losses),
        "train_minutes": train_minutes,
        "resolution": resolution,
        "batch_size": batch_size,
        "precision": precision,  # bf16 autocast, or fp32 throughout
        "lr": lr,
        "kl_weight": kl_weight,
        "lpips_weight": lpips_weight,
        "train_images": len(train_files),
        "held_out": [p.name for p in held_files],
        "scaling_factor": scaling,
        "shift_factor": shift,
        "loss_first": losses[0],
        "loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "losses": losses,
        "eval": {name: {str(r): reconstruction_quality(vae, load_eval_images(fs, r)) for r in eval_resolutions}
                 for name, fs in eval_sets.items()},
        "speed": measure_codec_speed(vae) if time_codec else None,
    }
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        vae.half().save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "losses"},
                                                      indent=2) + "\n")
    metrics["size_bytes"] = (out_dir / "diffusion_pytorch_model.safetensors").stat().st_size
    return metrics


# -- the small video teacher (weights/tiny-wan) ----------------------------------------------------------------

# An AutoencoderKLWan a twelfth of Wan 2.1's width: the same causal 3D layout, 16 latent channels, 8x space and 4x
# time (so its students take the taew2_1 layout), one residual block per stage and no attention.
TINY_WAN_ARCH = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[False, True, True])


def check_video_frames(frames: int, arch: dict | None = None) -> None:
    """Clips of 1 + 4k frames (the AutoencoderKLWan's time factor), checked before any photo is read."""
    k = 2 ** sum((arch or {}).get("temperal_downsample", TINY_WAN_ARCH["temperal_downsample"]))
    check_range("--frames", frames, high=MAX_FRAMES)
    if (frames - 1) % k:
        raise ConfigError(f"--frames {frames} does not encode to whole latents: the AutoencoderKLWan takes 1 + {k}k "
                          f"frames ({1 + k}, {1 + 2 * k}, {1 + 3 * k}, ...); pick one of those.")


def build_small_video_vae(seed: int = 0, **overrides):
    """A randomly initialised AutoencoderKLWan with the tiny-wan architecture (or overrides)."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TINY_WAN_ARCH, **overrides})


@torch.no_grad()
def latent_statistics(vae, clips: torch.Tensor, batch_size: int = 4) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over `clips`: the config's latents_mean / latents_std,
    which Wan pipelines normalise with (as Wan 2.1's own were chosen)."""
    raw = torch.cat([vae.encode(c).latent_dist.mean.float() for c in clips.split(batch_size)])
    flat = raw.transpose(0, 1).flatten(1)
    return flat.mean(1).tolist(), flat.std(1).clamp_min(1e-6).tolist()


@torch.no_grad()
def clip_quality(vae, clips: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """Mean per-frame PSNR and SSIM of posterior-mean reconstructions of (N, 3, F, H, W) clips, clamped."""
    psnrs, ssims = [], []
    for chunk in clips.split(batch_size):
        rec = vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
        a, b = rec.transpose(1, 2).flatten(0, 1), chunk.transpose(1, 2).flatten(0, 1)
        psnrs += image_metrics.psnr(a, b).tolist()
        ssims += image_metrics.ssim(a, b).tolist()
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "frames": len(psnrs)}


def train_small_video_vae(
    data_dir: str | Path,
    out_dir: str | Path,
    steps: int = 2000,
    frames: int = 5,
    resolution: int = 64,
    batch_size: int = 2,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    holdout: int = 1,
    eval_clips: int = 8,
    warmup: int = 50,
    seed: int = 0,
    max_minutes: float | None = None,
    log_every: int = 25,
    overwrite: bool = False,
    arch: dict | None = None,
) -> dict:
    """Train a small AutoencoderKLWan on pan-and-zoom clips of a photo folder (tinyae.data.clips.PhotoClips) and
    save it (fp16 safetensors) with per-channel latent statistics, the way `train_small_vae` makes the image one.

    The loss is the image teacher's, L1 on every frame plus a faint per-element KL, on the decode of the
    posterior mean (see the comment in the loop). Returns the metrics also
    written to `out_dir/training.json` (held-out per-frame PSNR/SSIM, latent statistics, steps, minutes).
    """
    check_teacher_arguments(steps, resolution, batch_size, lr, seed)
    check_video_frames(frames, arch)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"'{out_dir}' {EXISTS}.")
    files, _ = scan_images(data_dir)
    train_files, held_files = split_holdout(files, holdout)
    policy = ClipPolicy(frames, resolution)
    dataset = PhotoClips(train_files, policy, seed=seed)
    vae = build_small_video_vae(seed, **(arch or {})).train()
    params = sum(p.numel() for p in vae.parameters())
    logger.info("AutoencoderKLWan with %.2fM parameters; %d training photos, %d held out", params / 1e6,
                len(train_files), len(held_files))
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        if not _schedule(optimizer, lr, warmup, step, steps, start, max_minutes):
            break
        # Random clips of random photos: clips taken in order come photo by photo, and the model chased each in turn.
        picks = torch.randint(0, 2**30, (batch_size,), generator=order)
        clips = torch.stack([dataset[int(i)] for i in picks])
        posterior = vae.encode(clips).latent_dist
        # The posterior mean, not a sample: at this width the encoder's means start about 100x smaller than the
        # unit posterior noise, and sampled training stalled (L1 flat near 0.4 over 700 steps, measured).
        recon = vae.decode(posterior.mean).sample.float()
        pixel = F.l1_loss(recon, clips)
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()
        loss = pixel + kl_weight * kl
        losses.append(_update(vae, optimizer, loss, step))
        if step % log_every == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f l1 %.4f kl %.3f lr %.2e %.2f s/step", step, steps, losses[-1],
                        pixel.item(), kl.item(), optimizer.param_groups[0]["lr"],
                        (time.perf_counter() - start) / (step + 1))
    train_minutes = (time.perf_counter() - start) / 60

    # Measured on the weights as shipped (fp16), on clips no training step drew.
    vae = vae.eval().requires_grad_(False).half().float()
    unseen = torch.stack([dataset[2**31 + i] for i in range(4 * eval_clips)])  # beyond any training pick
    mean, std = latent_statistics(vae, unseen)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    held = torch.stack([PhotoClips(held_files, policy, seed=seed + 1)[i] for i in range(eval_clips)]) if (
        held_files) else unseen[:eval_clips]
    metrics = {
        "parameters": params, "steps": len(losses), "train_minutes": train_minutes, "frames": frames,
        "resolution": resolution, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
        "train_photos": [p.name for p in train_files], "held_out": [p.name for p in held_files],
        "latents_mean": mean, "latents_std": std, "loss_first": losses[0],
        "loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "eval": {"held_out_clips" if held_files else "unseen_training_clips": clip_quality(vae, held)},
    }
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        vae.half().save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics["size_bytes"] = (out_dir / "diffusion_pytorch_model.safetensors").stat().st_size
    return metrics
