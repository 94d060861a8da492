"""Student layouts: a registry of named variants (timm-style) and the one resolved architecture.

A variant is a complete layout: widths and residual blocks per stage for the encoder and
the decoder, an optional stride-2 stem in front of the encoder, and FLUX.2's GroupNorm
"pool" branch. The names follow madebyollin/taesd's `taesd.py`:

- `taesd`: TAESD's own shape (f8, one width of 64, blocks 1-3-3-3 / 3-3-3-1), which diffusers'
  AutoencoderTiny holds;
- `flux_2`: `taesd` plus the pool branch in the deepest encoder stage and the first decoder
  stage ("flux_2 required global pooling/norm for accurate distillation", taef2);
- `f32`: the 32x layout of taesana (DC-AE f32c32): two stride-2 stem convs before an f8
  encoder, and a six-stage decoder whose widths narrow 256 -> 128 -> 64.
- `f16`: tinyae's 16x layout on the same pattern (one stride-2 stem conv, a five-stage decoder
  128 -> 64), for f16 teachers such as Wan 2.2's VAE; no published TAESD uses it.

A size (`SIZES`: tiny, lean, slim, nano) narrows a variant where a student spends its time:
the stages at full and half resolution hold most of the multiply-accumulates (TAESD's
decoder at 512 px: 39 of its 71 GMACs at full resolution, 24 at half), so a size caps the
widths (and block counts) of the outermost stages and keeps the deep ones. Sizes therefore
compose with every layout (a slim `flux_2` keeps its pool branch; a slim `f32` its stem and
deep 256-wide stages). `tiny` is the variant as published.

Any field of `StudentConfig` left unset comes from the variant (narrowed by the size); a
variant left unset comes from the teacher (`variant_for_teacher`). Register new layouts with
`register_variant` and new sizes with `register_size`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tinyae.config import StudentConfig
from tinyae.errors import ConfigError


@dataclass(frozen=True)
class StudentArch:
    """Everything that shapes a student's tensors; two students with equal archs load each other's weights."""

    latent_channels: int
    encoder_widths: tuple[int, ...] = (64, 64, 64, 64)
    decoder_widths: tuple[int, ...] = (64, 64, 64, 64)
    encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    encoder_stem: tuple[int, ...] = ()  # stride-2 convs (+ activation) before the first stage
    pool: bool = False  # GroupNorm pool branch in the deepest encoder stage and the first decoder stage
    act_fn: str = "relu"
    upsample_fn: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("encoder_widths", "decoder_widths", "encoder_blocks", "decoder_blocks", "encoder_stem"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.encoder_stem) + len(self.encoder_widths) - 1)

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.decoder_widths) - 1)

    @property
    def autoencoder_tiny(self) -> bool:
        """Whether diffusers' AutoencoderTiny can hold these tensors (one width per side, no stem, no pool)."""
        return (not self.encoder_stem and not self.pool and len(set(self.encoder_widths)) == 1
                and len(set(self.decoder_widths)) == 1 and len(self.encoder_widths) == len(self.decoder_widths))

    def validate(self) -> None:
        checks = [
            (self.latent_channels > 0, "latent_channels must be positive"),
            (len(self.encoder_widths) == len(self.encoder_blocks) >= 1,
             "encoder_widths and encoder_blocks need one entry per stage"),
            (len(self.decoder_widths) == len(self.decoder_blocks) >= 1,
             "decoder_widths and decoder_blocks need one entry per stage"),
            (min(self.encoder_widths + self.decoder_widths + self.encoder_stem, default=1) > 0,
             "widths must be positive"),
            (min(self.encoder_blocks + self.decoder_blocks) >= 0, "block counts cannot be negative"),
            (not self.encoder_stem or self.encoder_stem[-1] == self.encoder_widths[0],
             "the last stem width must equal the first encoder width"),
            (self.downscale == self.upscale,
             f"the encoder downscales {self.downscale}x but the decoder upscales {self.upscale}x"),
            (not self.pool or (self.encoder_blocks[-1] > 0 and self.decoder_blocks[0] > 0),
             "the pool branch needs blocks in the deepest encoder stage and the first decoder stage"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid student architecture: {message} ({self}).")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Variant:
    """A named layout: every StudentArch field but latent_channels, which comes from the teacher."""

    arch: dict = field(default_factory=dict)  # StudentArch fields other than latent_channels
    note: str = ""


VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, variant: Variant) -> None:
    VARIANTS[name] = variant


register_variant("taesd", Variant({}, "TAESD's shape: f8, width 64, blocks 1-3-3-3 / 3-3-3-1 (AutoencoderTiny)"))
register_variant("flux_2", Variant({"pool": True}, "taesd + GroupNorm pool branch in the deepest stages (taef2)"))
register_variant("f32", Variant({
    "encoder_stem": (32, 64), "encoder_widths": (64, 64, 64, 64), "encoder_blocks": (1, 3, 3, 3),
    "decoder_widths": (256, 128, 64, 64, 64, 64), "decoder_blocks": (3, 3, 3, 3, 3, 1),
}, "32x layout of taesana (DC-AE f32c32): stride-2 stem, decoder 256 -> 128 -> 64"))
register_variant("f16", Variant({
    "encoder_stem": (64,), "encoder_widths": (64, 64, 64, 64), "encoder_blocks": (1, 3, 3, 3),
    "decoder_widths": (128, 64, 64, 64, 64), "decoder_blocks": (3, 3, 3, 3, 1),
}, "16x layout on the f32 pattern: one stride-2 stem conv, decoder 128 -> 64"))


ALIASES = {"flux2": "flux_2"}  # the family's name works for its layout too


@dataclass(frozen=True)
class Size:
    """Caps on the widths and residual blocks of a variant's highest-resolution stages.

    Each tuple lists caps from full resolution inwards: `decoder_widths=(16, 32)` caps the
    decoder's full-resolution stage at 16 channels and its half-resolution stage at 32, and
    leaves deeper stages as the variant has them. Encoder stem convs count as stages at the
    resolution they output.
    """

    encoder_widths: tuple[int, ...] = ()
    encoder_blocks: tuple[int, ...] = ()
    decoder_widths: tuple[int, ...] = ()
    decoder_blocks: tuple[int, ...] = ()
    note: str = ""


SIZES: dict[str, Size] = {}


def register_size(name: str, size: Size) -> None:
    SIZES[name] = size


# Chosen by counting MACs per resolution and timing decode/encode at 512 px on a 2-core CPU (docs/performance.md,
# "Student sizes"); their quality against `tiny` is what training them in the quality study decides.
register_size("tiny", Size(note="the variant as published (TAESD: 61 + 71 GMACs encode + decode at 512 px)"))
register_size("lean", Size((32, 32), (), (32, 32), (), "outer two stages at 32 channels"))
register_size("slim", Size((16, 32), (), (16, 32), (), "full resolution at 16 channels, half resolution at 32"))
register_size("nano", Size((12, 24, 48), (1, 2), (12, 24, 48), (1, 2),
                           "outer three stages at 12, 24, 48 channels; at most 1 and 2 blocks in the outer two"))


def _capped(values: tuple[int, ...], caps: tuple[int, ...], levels: list[int]) -> tuple[int, ...]:
    """`values[i]` capped by `caps[levels[i]]` (level 0: full resolution), where there is such a cap."""
    return tuple(min(v, caps[level]) if level < len(caps) else v for v, level in zip(values, levels))


def apply_size(arch: dict, size: Size) -> dict:
    """A variant's StudentArch fields narrowed by `size` (see `Size`)."""
    stem, n_enc, n_dec = tuple(arch["encoder_stem"]), len(arch["encoder_widths"]), len(arch["decoder_widths"])
    enc_levels = [len(stem) + i for i in range(n_enc)]  # a stem conv j outputs at level j + 1
    dec_levels = [n_dec - 1 - i for i in range(n_dec)]  # the last decoder stage is at full resolution
    return {**arch,
            "encoder_stem": _capped(stem, size.encoder_widths, [j + 1 for j in range(len(stem))]),
            "encoder_widths": _capped(tuple(arch["encoder_widths"]), size.encoder_widths, enc_levels),
            "encoder_blocks": _capped(tuple(arch["encoder_blocks"]), size.encoder_blocks, enc_levels),
            "decoder_widths": _capped(tuple(arch["decoder_widths"]), size.decoder_widths, dec_levels),
            "decoder_blocks": _capped(tuple(arch["decoder_blocks"]), size.decoder_blocks, dec_levels)}


def variant_for_teacher(downscale: int, family: str | None = None) -> str:
    """The layout a teacher's latents call for when the recipe names none."""
    if family == "flux2":
        return "flux_2"
    if downscale in (16, 32):
        return f"f{downscale}"
    if downscale != 8:
        raise ConfigError(f"No student variant is registered for a {downscale}x teacher; set student.encoder_widths, "
                          "decoder_widths, encoder_blocks and decoder_blocks (one stage per 2x) yourself.")
    return "taesd"


def _per_stage(side: str, widths: list[int] | None, blocks: list[int] | None, variant: dict, name: str
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One side's widths and blocks: overrides first, the variant's otherwise; a single value fills every stage."""
    given = {f"{side}_widths": widths, f"{side}_blocks": blocks}
    lengths = {k: len(v) for k, v in given.items() if v is not None and len(v) > 1}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"student.{side}_widths and student.{side}_blocks list different numbers of stages "
                          f"({lengths[f'{side}_widths']} and {lengths[f'{side}_blocks']}).")
    n = next(iter(lengths.values()), len(variant[f"{side}_widths"]))
    out = []
    for key, value in given.items():
        if value is None:
            value = variant[key]
            if len(value) not in (1, n):
                field = next(iter(lengths))
                raise ConfigError(f"student.{field} lists {n} stages but variant '{name}' has {len(value)} {key}; "
                                  f"set student.{key} too (one value per stage, or one for all).")
        out.append(tuple(value) * n if len(value) == 1 else tuple(value))
    return out[0], out[1]


def resolve_arch(config: StudentConfig, latent_channels: int | None = None, downscale: int | None = None,
                 family: str | None = None, layout: StudentArch | None = None) -> StudentArch:
    """The architecture a recipe's `student` section asks for: its variant narrowed by its size, then its
    explicit fields (which win), with what is left open taken from the teacher.

    `layout` (a warm start's donor) stands in for the variant when the recipe names none, so the size
    and explicit fields apply to the donor's layout.
    """
    name = ALIASES.get(config.variant, config.variant) or variant_for_teacher(downscale or 8, family)
    if name not in VARIANTS:
        raise ConfigError(f"Unknown student.variant '{name}'; registered: {', '.join(VARIANTS)}.")
    size = config.size or "tiny"
    if size not in SIZES:
        raise ConfigError(f"Unknown student.size '{size}'; registered: {', '.join(SIZES)}.")
    start = dataclasses.asdict(layout) if layout is not None and config.variant is None else {
        **dataclasses.asdict(StudentArch(latent_channels=1)), **VARIANTS[name].arch}
    if layout is not None and config.variant is None:
        name = "student.init"
    base = apply_size(start, SIZES[size])
    channels = config.latent_channels or latent_channels
    if channels is None:
        raise ConfigError("The student's latent_channels are unknown: set student.latent_channels or give a teacher.")
    arch = {**base, "latent_channels": channels, "act_fn": config.act_fn, "upsample_fn": config.upsample_fn}
    for side in ("encoder", "decoder"):
        arch[f"{side}_widths"], arch[f"{side}_blocks"] = _per_stage(
            side, getattr(config, f"{side}_widths"), getattr(config, f"{side}_blocks"), base, name)
    if config.encoder_stem is not None:
        arch["encoder_stem"] = tuple(config.encoder_stem)
    if config.pool is not None:
        arch["pool"] = config.pool
    resolved = StudentArch(**arch)
    if downscale is not None and resolved.downscale != downscale:
        raise ConfigError(f"The student downscales {resolved.downscale}x but the teacher {downscale}x; pick a variant "
                          f"with {int(math.log2(downscale))} halvings (student.variant) or adjust the stages.")
    return resolved
