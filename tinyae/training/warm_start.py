"""Warm starts: a student that begins as a published TAE (the donor), in the teacher's latent space.

Practitioners fine-tune a published TAE rather than train one from scratch (TAEHV began as TAEM1,
a latent space with another channel count). A donor of another latent space (channel count,
scale/shift or family) but the teacher's downscale is aligned by two linear maps fitted on the
same crops, by ridge least squares on every latent pixel: teacher <- donor, folded into the
encoder's last conv (so the donor's encoder writes the teacher's latents), and donor <- teacher,
folded into the decoder's first conv (so the donor's decoder reads them). Each fit's R² is
reported and a poor one is warned about. The recipe's architecture fields (size, widths,
blocks, act_fn) apply on the donor's layout; tensors whose shapes then differ start fresh and the
log names their layers. A video student (TAEHV layout) warm-starts from an image student by the same
transfer (`video_warm_start`): its per-frame convs take the image student's where the shapes fit. The map is
a cheap first step: the decoder's soft clamp sits before its
first conv, so the fold is exact only where latents are small, and training does the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tinyae.config import Recipe
from tinyae.errors import ConfigError
from tinyae.evaluation.metrics import LatentStats
from tinyae.models.formats import load_student
from tinyae.models.presets import TEACHERS
from tinyae.models.student import Block, Student
from tinyae.models.teacher import Teacher
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import MemBlock, TGrow, TPool, VideoStudent, load_video_student
from tinyae.training.latent_bridge import fit_bridges
from tinyae.utils.weights import read_weights, refuse_non_finite

logger = logging.getLogger(__name__)

POOR_FIT = 0.9  # R² below this: the donor's space is far from linear in the teacher's; the warm start helps less
SAME = 0.9999  # R² of the donor's latents as they are: above it the spaces are one, and no map is folded
FIT_BATCH = 8


@dataclass
class LatentMap:
    """y ≈ weight @ x + bias per latent pixel (weight: (C_out, C_in)), and how much of y it explains."""

    weight: torch.Tensor
    bias: torch.Tensor
    r2: float


def fit_latent_map(source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> LatentMap:
    """Ridge least squares from `source` (B, C_in, h, w) latents to `target` (B, C_out, h, w), in float64.

    The ridge is relative to the source's mean variance, so it means the same for every scale of latents.
    """
    if source.shape[0] != target.shape[0] or source.shape[-2:] != target.shape[-2:]:
        raise ConfigError(f"Latents of shape {tuple(source.shape)} and {tuple(target.shape)} do not cover the "
                          "same pixels: the donor and the teacher must have the same downscale.")
    x = source.double().permute(0, 2, 3, 1).reshape(-1, source.shape[1])
    y = target.double().permute(0, 2, 3, 1).reshape(-1, target.shape[1])
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean().clamp_min(1e-12)
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc).T
    bias = y_mean - weight @ x_mean
    residual = ((yc - xc @ weight.T) ** 2).sum()
    r2 = float(1 - residual / (yc ** 2).sum().clamp_min(1e-12))
    return LatentMap(weight.float(), bias.float(), r2)


def fold_into_encoder(conv: nn.Conv2d, donor_conv: nn.Conv2d, latent_map: LatentMap) -> None:
    """`conv` := the map applied after `donor_conv` (the encoder's last conv writes the teacher's latents)."""
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("td,dkij->tkij", latent_map.weight, donor_conv.weight))
        conv.bias.copy_(latent_map.weight @ donor_conv.bias + latent_map.bias)


def fold_into_decoder(conv: nn.Conv2d, donor_conv: nn.Conv2d, latent_map: LatentMap) -> None:
    """`conv` := `donor_conv` applied after the map (the decoder's first conv reads the teacher's latents)."""
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("kdij,dt->ktij", donor_conv.weight, latent_map.weight))
        conv.bias.copy_(donor_conv.bias + torch.einsum("kdij,d->k", donor_conv.weight, latent_map.bias))


def load_donor(init: str, flag: str = "student.init") -> Student:
    """The donor named by student.init (`flag`: how the calling command spells it): a shipped TAE preset (taef2),
    a folder, a TAESD pair or file, a Hub id. A donor with NaN or inf weights is refused as such (training from
    it would stop at once, blaming the learning rate)."""
    preset = TEACHERS.get(init)
    source = init
    if preset is not None:
        if preset.vae_class not in ("TinyAutoencoder", "AutoencoderTiny"):
            raise ConfigError(f"{flag} '{init}' names a full VAE, not a tiny autoencoder; start from a "
                              f"published TAE ({', '.join(tiny_presets())}), a TAESD pair or an AutoencoderTiny "
                              "folder.")
        source = preset.repo_id
    donor = load_student(source, encoder_only=True)
    refuse_non_finite(donor.state_dict(), f"The donor '{init}' ({flag})", "start from another donor, or from a "
                      "checkpoint of it from before its training diverged")
    return donor


def tiny_presets() -> list[str]:
    return [name for name, preset in TEACHERS.items() if preset.vae_class in ("TinyAutoencoder", "AutoencoderTiny")]


def _layers(half: nn.Module) -> nn.Sequential:
    """An image student's `encoder.layers`, or a video student's encoder / decoder itself."""
    return getattr(half, "layers", half)


def _layer_tags(layers: nn.Sequential) -> dict[tuple[int, int], int]:
    """(convs so far, blocks since the last conv) -> layer index: the same place in two layouts with equal stages.

    An image Block and a video MemBlock at the same place are the same block (the MemBlock also sees the
    previous frame); TPool / TGrow are not counted, so a TAEHV layout lines up with a TAESD one."""
    tags, convs, blocks = {}, 0, 0
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            convs, blocks = convs + 1, 0
            tags[(convs, 0)] = index
        elif isinstance(layer, (Block, MemBlock)):
            blocks += 1
            tags[(convs, blocks)] = index
    return tags


def copy_by_shape(target: nn.Module, source: nn.Module | None) -> bool:
    """Copy `source`'s tensors into `target` when every one fits; returns whether it did.

    A tensor fits when the shapes are equal, or when `target`'s is a MemBlock's first conv over [frame,
    previous frame] and `source`'s the image block's conv over the frame: that half is copied and the other
    zeroed, so the block starts as the image block applied to each frame."""
    own, theirs = target.state_dict(), source.state_dict() if source is not None else {}
    if own.keys() != theirs.keys():
        return False
    widened = {k for k in own if own[k].ndim == 4 and theirs[k].ndim == 4 and own[k].shape[0] == theirs[k].shape[0]
               and own[k].shape[1] == 2 * theirs[k].shape[1] and own[k].shape[2:] == theirs[k].shape[2:]
               and isinstance(target, MemBlock)}
    if any(own[k].shape != theirs[k].shape for k in own if k not in widened):
        return False
    with torch.no_grad():
        for key, value in own.items():
            if key in widened:
                value.zero_()[:, : theirs[key].shape[1]].copy_(theirs[key])
            else:
                value.copy_(theirs[key])
    return True


def transfer(student: nn.Module, donor: Student, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the donor's tensors into `student` layer by matching layer; returns the student layers left fresh.

    Layers are matched by their place (stage and block), not their index, so a layout with fewer blocks per
    stage still gets the donor's blocks where they exist, and a video student (TAEHV layout) gets an image
    student's per-frame convs. `skip` names halves that were never trained.
    """
    fresh = []
    for side in ("encoder", "decoder"):
        ours, theirs = _layers(getattr(student, side)), _layers(getattr(donor, side))
        prefix = f"{side}.layers" if ours is not getattr(student, side) else side
        their_tags = _layer_tags(theirs)
        for tag, index in _layer_tags(ours).items():
            source = theirs[their_tags[tag]] if tag in their_tags and side not in skip else None
            if not copy_by_shape(ours[index], source):
                fresh.append(f"{prefix}.{index}")
    return fresh


def per_frame_time_layers(student: VideoStudent) -> list[str]:
    """Set every TPool to average its frames and every TGrow to repeat its frame, so a warm-started video
    student starts as its per-frame convs applied frame by frame; returns the layers set."""
    done = []
    for side in ("encoder", "decoder"):
        for index, layer in enumerate(getattr(student, side)):
            if isinstance(layer, (TPool, TGrow)):
                width = layer.conv.out_channels // (1 if isinstance(layer, TPool) else layer.stride)
                eye = torch.eye(width)
                blocks = [eye / layer.stride] * layer.stride if isinstance(layer, TPool) else [eye] * layer.stride
                with torch.no_grad():
                    layer.conv.weight.copy_(torch.cat(blocks, 1 if isinstance(layer, TPool) else 0)[..., None, None])
                done.append(f"{side}.{index}")
    return done


def load_video_donor(init: str) -> VideoStudent | None:
    """A video student named by student.init (a VideoStudent folder, a run or checkpoint holding one, a TAEHV
    file), or None when `init` names something else."""
    path = Path(init)
    for folder in (path / "student_ema", path / "student", path):
        config = folder / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == VideoStudent.__name__:
            return load_video_student(folder)
    if path.is_file() and path.suffix in (".pth", ".safetensors") and "decoder.22.bias" in read_weights(path):
        return load_video_student(path)
    return None


def _finite_video_donor(init: str) -> VideoStudent | None:
    donor = load_video_donor(init)
    if donor is not None:
        refuse_non_finite(donor.state_dict(), f"The donor '{init}' (student.init)", "start from another donor, or "
                          "from a checkpoint of it from before its training diverged")
    return donor


def video_warm_start(recipe: Recipe, name: str) -> VideoStudent:
    """A `name`-layout video student that starts from the student named by `recipe.student.init`.

    A video student of the same layout is copied whole. An image student (TAESD pair, TinyAutoencoder folder,
    `taef2`-like preset) gives every conv and block whose shapes fit the TAEHV layout's per-frame ones, its
    temporal layers start as frame averaging / repeating, and the log names what started fresh. The latents
    are not mapped: an image student of another latent space gives its inner layers, and its latent convs
    only where the channel counts agree.
    """
    init = recipe.student.init
    student = VideoStudent.published(name)
    video_donor = _finite_video_donor(init)
    if video_donor is not None:
        if video_donor.arch != student.arch:
            raise ConfigError(f"student.init '{init}' is a video student of another layout than '{name}'; start "
                              "from one of the same layout, or from an image student.")
        student.load_state_dict(video_donor.state_dict())
        logger.info("Warm start from the video student '%s': every layer copied.", init)
        return student
    donor = load_donor(init).eval()
    if donor.downscale != student.arch.downscale:
        raise ConfigError(f"student.init '{init}' downscales {donor.downscale}x but the '{name}' layout "
                          f"{student.arch.downscale}x: a warm start transfers stages one for one and cannot add or "
                          "drop them; start from an image student of that downscale, or from scratch.")
    fresh = transfer(student, donor, donor.untrained)
    refuse_frozen_fresh(recipe.train.parts, fresh, init)
    timed = per_frame_time_layers(student)
    logger.info("Warm start of the %s video student from the image student '%s' (%d -> %d latent channels): per-frame "
                "convs copied where shapes fit; temporal layers set to average / repeat frames: %s; fresh: %s.", name,
                init, donor.latent_channels, student.arch.latent_channels, ", ".join(timed), ", ".join(fresh) or "none")
    return student


def refuse_frozen_fresh(parts: str, fresh: list[str], init: str | None) -> None:
    """train.parts encoder/decoder freezes the other half as it starts: a fresh (random) layer there would never
    learn and every image would go through it, so refuse before any training."""
    frozen = {"encoder": "decoder", "decoder": "encoder"}.get(parts)
    layers = [name for name in fresh if name.split(".")[0] == frozen]
    if frozen is None or not layers:
        return
    start = (f"the donor '{init}' gives it no weights for {', '.join(layers[:3])}"
             + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")) if init else "there is no student.init"
    raise ConfigError(f"train.parts {parts} freezes the {frozen}, but {start}, so it would stay random and never "
                      f"train; pass --train.parts both (or a student.init whose {frozen} fits the student).")


def _latents(encode, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encode(images[i:i + FIT_BATCH]).float() for i in range(0, len(images), FIT_BATCH)])


def warm_start(recipe: Recipe, teacher: Teacher, images: torch.Tensor) -> Student:
    """A student for `teacher` that starts as the donor named by `recipe.student.init`, aligned on `images`.

    Refuses a donor of another downscale (there are no stages to transfer one for one). Logs what was
    transferred, mapped and left fresh, and each fit's R².
    """
    config, init = recipe.student, recipe.student.init
    donor = load_donor(init).eval()
    if donor.downscale != teacher.downscale:
        raise ConfigError(f"student.init '{init}' downscales {donor.downscale}x but the teacher "
                          f"{teacher.downscale}x: a warm start transfers stages one for one and cannot add or drop "
                          "them; start from a TAE of the teacher's downscale, or train from scratch without "
                          "student.init.")
    arch = resolve_arch(config, teacher.latent_channels, teacher.downscale, teacher.family,
                        layout=dataclasses.replace(donor.arch, latent_channels=teacher.latent_channels))
    student = Student(arch)
    fresh = transfer(student, donor, donor.untrained)
    for name in ("act_fn", "upsample_fn"):
        if getattr(arch, name) != getattr(donor.arch, name):
            logger.warning("The donor '%s' was trained with %s=%s; the student uses %s as student.%s says.", init,
                           name, getattr(donor.arch, name), getattr(arch, name), name)

    last_conv, first_conv = student.encoder.layers[-1], student.decoder.layers[0]
    donor_last, donor_first = donor.encoder.layers[-1], donor.decoder.layers[0]
    teacher_latents = _latents(teacher.encode, images.to(teacher.device)).cpu()
    donor_latents = _latents(donor.encode, images)
    as_is = LatentStats().update(donor_latents, teacher_latents).pooled_r2() if (
        donor.latent_channels == teacher.latent_channels) else 0.0
    mapped, same = [], as_is >= SAME
    if same:  # the donor already writes the teacher's latents (a copy, a resumed fine-tune): nothing to fold
        logger.info("The donor's latents already are the teacher's (R² >= %.4f): no latent map.", SAME)
    if not same and last_conv.in_channels == donor_last.in_channels:
        forward = fit_latent_map(donor_latents, teacher_latents, config.init_ridge)
        fold_into_encoder(last_conv, donor_last, forward)
        mapped.append(f"encoder.layers.{len(student.encoder.layers) - 1} (teacher <- donor, R² {forward.r2:.4f})")
        if forward.r2 < POOR_FIT:
            logger.warning("The donor's latents explain only R² %.3f of the teacher's through a linear map: the "
                           "encoder starts far from the teacher and the warm start helps it less%s.", forward.r2,
                           "; it is not trained (train.parts decoder): pass --train.parts both"
                           if recipe.train.parts == "decoder" else "")
    if not same and first_conv.out_channels == donor_first.out_channels and "decoder" not in donor.untrained:
        backward = fit_latent_map(teacher_latents, donor_latents, config.init_ridge)
        fold_into_decoder(first_conv, donor_first, backward)
        mapped.append(f"decoder.layers.0 (donor <- teacher, R² {backward.r2:.4f})")
        if backward.r2 < POOR_FIT:
            logger.warning("The teacher's latents explain only R² %.3f of the donor's through a linear map: the "
                           "decoder starts far from the teacher and the warm start helps it less.", backward.r2)
    boundary = {name.split(" ")[0] for name in mapped}
    if not same and recipe.student.init_bridge_steps and mapped:
        boundary |= bridge(recipe, teacher, student, donor, images, teacher_latents, donor_latents, mapped)
    fresh = [name for name in fresh if name not in boundary]
    refuse_frozen_fresh(recipe.train.parts, fresh, init)
    logger.info("Warm start from '%s' (%d -> %d latent channels, %d crops of %d px): mapped %s; fresh: %s.", init,
                donor.latent_channels, teacher.latent_channels, len(images), images.shape[-1],
                ", ".join(mapped) or "nothing", ", ".join(fresh) or "none")
    return student


# ---------------------------------------------------------------- the nonlinear bridge (tinyae.training.latent_bridge)

def bridge(recipe: Recipe, teacher: Teacher, student: Student, donor: Student, images: torch.Tensor,
           teacher_latents: torch.Tensor, donor_latents: torch.Tensor, mapped: list[str]) -> set[str]:
    """Refit the folded boundary layers nonlinearly (student.init_bridge_steps > 0); returns the layers refitted."""
    sides = tuple(side for side in ("encoder", "decoder") if any(name.startswith(side) for name in mapped))
    decodes = torch.cat([teacher.decode(teacher_latents[i:i + FIT_BATCH].to(teacher.device)).float().cpu()
                         for i in range(0, len(teacher_latents), FIT_BATCH)]).clamp(-1, 1)
    targets, reencoded = donor_targets(donor, donor_latents, _latents(donor.encode, decodes), decodes)
    fits = fit_bridges(student, donor, images, teacher_latents, targets, recipe.student.init_bridge_steps,
                       recipe.train.seed, sides)
    logger.info("Latent bridge (%d steps per side on %d crops of %d px; decoder target: the donor's latents of the "
                "teacher's decode for %d crops, of the crop for the rest): %s.", recipe.student.init_bridge_steps,
                len(images), images.shape[-1], reencoded, "; ".join(fit.describe() for fit in fits))
    return {f"{fit.side}.layers.{i}" for fit in fits for i in range(*fit.layers)}


def donor_targets(donor: Student, of_crops: torch.Tensor, of_decodes: torch.Tensor, decodes: torch.Tensor
                  ) -> tuple[torch.Tensor, int]:
    """Per crop, the donor latents that the donor decodes closer to the teacher's decode: those of the crop (exact
    when the teacher's space is an invertible map of the donor's) or those of the teacher's decode (a function of
    the teacher's latents when its space holds less than the donor's); returns them and how many were the latter."""
    def error(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([((donor.decode(latents[i:i + FIT_BATCH]) - decodes[i:i + FIT_BATCH]) ** 2).mean((1, 2, 3))
                              for i in range(0, len(latents), FIT_BATCH)])
    better = error(of_decodes) < error(of_crops)
    return torch.where(better.view(-1, 1, 1, 1), of_decodes, of_crops), int(better.sum())
