"""Recipes: one dataclass per concern, loaded from YAML plus CLI overrides, validated once.

A recipe is data. Every field has a type; an unknown field or a value of the
wrong type is refused at start with the field's dotted name, so a typo never
turns into a silent default halfway through a GPU-day.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tinyae.errors import ConfigError
from tinyae.utils.dtypes import TeacherDType
from tinyae.utils.resources import recipes_dir

FP16_REFUSAL = ("train.mixed_precision fp16 is not supported: one loss scaler cannot serve the student's and the "
                "discriminator's optimizers, and the adversarial weights' gradients would be taken unscaled in fp16; "
                "use bf16 (accelerate launch --mixed_precision bf16, on GPUs from Ampere on) or no")
BASE_KEY = "base"  # a recipe file may name the recipe it extends; it then states only its differences
MIN_RESOLUTION = 32  # LPIPS's networks (loss and evaluation) reduce smaller images to nothing
MAX_RESOLUTION = 4096  # crops beyond this do not fit in memory (a 65536 px crop is 51 GB per image)
MAX_BATCH = 1024  # images or clips per batch: beyond this one batch of 4096 px crops alone is 200 GB
MAX_FRAMES = 1025  # frames per clip: 1 + 1024 (64 s at 16 fps) is past every video VAE's context


@dataclass
class TeacherConfig:
    name: str = "sd"  # preset (sd, sdxl, sd3, flux, tiny), Hub repo id or local diffusers folder
    subfolder: str | None = None
    revision: str | None = None
    scaling_factor: float | None = None  # None: preset, else the VAE config's value
    shift_factor: float | None = None
    dtype: TeacherDType = "fp32"  # auto: half precision on a GPU, fp16 where the VAE is fp16-safe, else bf16
    sample: bool = False  # sample the posterior instead of taking its mean
    estimate_factors: bool = False  # estimate scale/shift from the data when none is configured


@dataclass
class StudentConfig:
    """The student's layout: a registered variant (tinyae.models.variants), field by field overridable."""

    variant: str | None = None  # taesd | flux_2 | f32 | ...; None: the one the teacher's latents call for
    size: str | None = None  # tiny | lean | slim | nano | ...: narrows the variant's outer stages; None: tiny
    latent_channels: int | None = None  # None: the teacher's
    encoder_widths: list[int] | None = None  # per stage; one value applies to all; None: the variant's
    decoder_widths: list[int] | None = None
    encoder_blocks: list[int] | None = None  # residual blocks per stage
    decoder_blocks: list[int] | None = None
    encoder_stem: list[int] | None = None  # stride-2 convs before the first encoder stage (f32: [32, 64])
    pool: bool | None = None  # FLUX.2's GroupNorm pool branch in the deepest stages
    act_fn: Literal["relu", "silu", "swish", "mish", "gelu"] = "relu"
    upsample_fn: Literal["nearest", "bilinear", "bicubic"] = "nearest"
    taehv: str | None = None  # video teachers: the TAEHV layout (taew2_1, taew2_2, taehv, ...); None: the teacher's
    init: str | None = None  # start from a published TAE: a preset (taef2), folder, TAESD pair or Hub id; any latent
    # space of the teacher's downscale (tinyae.training.warm_start aligns it); the fields above still apply
    init_ridge: float = 1e-3  # ridge of the latent-space fit, relative to the donor latents' mean variance
    init_bridge_steps: int = 0  # > 0: then refit the donor's latent-resolution layers nonlinearly on cached latents
    init_fit_images: int = 32  # training images the donor and the teacher encode for the fits (centre crops)
    init_fit_resolution: int | None = None  # their crop size; None: data.resolution
    mid_grey_init: bool = False  # start the decoder's last bias at mid-grey (TAESD's 0.5 in [0, 1])
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str | None = None  # image folder; None with the smoke recipe: scikit-image's photos
    resolution: int = 256
    final_resolution: int | None = None  # crop size of the closing fine-tune phase
    final_steps: int = 0  # steps at final_resolution at the end of training
    crop_scale: Literal["zoom", "any"] = "zoom"  # any: crop side drawn from resolution up to the full short side
    max_zoom_out: float = 2.0  # zoom: shrink the short side to between resolution and this factor x resolution
    hflip: bool = True
    color_aug: float = 0.0  # share of crops whose saturation, hue, brightness and contrast are jittered
    holdout: int = 8  # images kept out of training for evaluation
    num_workers: int = 0
    cache: str | None = None  # teacher latent cache folder (`tinyae cache-latents`)
    final_cache: str | None = None  # teacher cache at final_resolution for the closing phase
    format: Literal["auto", "folder", "tar", "hf", "hf-stream"] = "auto"  # tar: webdataset shards; hf: save_to_disk
    image_column: str = "image"  # image column of a Hugging Face dataset
    split: str = "train"  # split of a Hugging Face dataset
    shuffle_buffer: int = 1000  # records shuffled in memory when streaming
    eval_path: str | None = None  # folder of held-out images (replaces data.holdout; needed for streams)
    eval_resolution: int | None = None  # the run's final evaluation also at this size (where users decode), besides
    # the training crops: a decoder trained on small crops can fail at 512 px while its own crops look fine. The GPU
    # recipes and `newspace` set 512; off by default because on a CPU it costs a minute at the end of a short run
    # video teachers: clips of `frames` frames (1 + 4k: 1 + k latents), from video files every 1 to `max_stride`
    # frames, or panned and zoomed across photos (tinyae.data.clips)
    frames: int = 9
    max_stride: int = 4


@dataclass
class LossConfig:
    """The loss terms and their weights (tinyae.training.losses and .adversarial say what each one is)."""

    # encoder: match the teacher's latents
    latent: Literal["mse", "l1"] = "mse"
    latent_weight: float = 1.0
    encoder_adv_weight: float = 0.0  # the student's round trip judged by the discriminator, into the encoder too
    # decoder: reconstruct the image from the teacher's latents
    target: Literal["image", "teacher"] = "image"  # the real image or the teacher's reconstruction
    pixel: Literal["mse", "l1"] = "mse"
    pixel_weight: float = 1.0
    pixel_pool: int = 1  # average-pool both images by this factor first (8: TAESD 1.2's faint low-res MSE)
    lpips_weight: float = 0.1
    lpips_net: Literal["alex", "vgg"] = "alex"
    adv_weight: float = 0.0
    adv_start: int = 0  # step at which the discriminator starts to train and to count
    adv_loss: Literal["hinge", "relativistic"] = "hinge"  # relativistic: Seraena's least-squares + feature matching
    adv_scale: Literal["raw", "normalized", "adaptive"] = "raw"  # how the adversarial gradient is sized
    replay: int = 0  # past fakes the discriminator also sees (0: none)
    disc: Literal["patch", "multiscale"] = "patch"  # multiscale: scores from every depth (Seraena's)
    disc_width: int = 64
    disc_frames: int = 3  # video: consecutive frames the discriminator judges together (stacked on channels)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.9])
    weight_decay: float = 0.0
    disc_lr: float = 3e-4
    grad_clip: float = 1.0
    warmup_steps: int = 0
    amsgrad: bool = False


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 16
    grad_accum: int = 1
    # auto: the launcher's (`accelerate launch --mixed_precision`, `accelerate config`), "no" without one; an explicit
    # value must agree with an explicit launcher's. fp16 is refused (tinyae.training.launch says why): use bf16.
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    seed: int = 0
    ema_decay: float = 0.999
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 5000
    checkpoints_total_limit: int = 3
    log_with: str | None = "tensorboard"
    output_dir: str = "runs/tinyae"
    resume: str | None = None  # None | latest | path to a checkpoint folder
    push_to_hub: str | None = None  # Hub repo id to publish the student to at the end
    channels_last: bool = False
    compile: bool = False  # torch.compile the student (opt-in: slow to start, faster on GPUs)
    # CPU threads (tinyae.utils.threads): auto picks the free CPUs once, at the run's start, and a resume keeps that
    # count (bit-exact resumes under any load); adaptive re-checks every 30 s (faster on a shared CPU, not exact)
    threads: Literal["auto", "adaptive", "torch"] | int = "auto"
    sample_images: int = 4  # held-out images in the sample grid
    parts: Literal["both", "encoder", "decoder"] = "both"  # which half trains (a preview decoder needs only its own)


@dataclass
class Recipe:
    name: str = "custom"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, overridden: frozenset[str] = frozenset()) -> "Recipe":
        """Checks that need more than one field's type; a message names the flag when the value came from one."""

        def invalid(message: str) -> ConfigError:
            # Blame the flag a named field came from (the first word's, else any other's), else the recipe file.
            named = [word.rstrip(",;:") for word in message.split()]
            field = next((w for w in named if w in overridden), named[0])
            where = f"value for --{field}" if field in overridden else f"recipe '{self.name}'"
            return ConfigError(f"Invalid {where}: {message}.")

        for name, value in dotted_fields(self.to_dict()).items():
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise invalid(f"{name} must be a finite number, got {number}")
            if name.endswith("_weight") and value < 0:
                raise invalid(f"{name} cannot be negative (0 turns the term off)")
        sizes = f"must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} px (LPIPS needs {MIN_RESOLUTION})"
        checks = [
            (self.train.steps > 0, "train.steps must be positive"),
            (0 < self.train.batch_size <= MAX_BATCH, f"train.batch_size must be between 1 and {MAX_BATCH}"),
            (self.train.seed >= 0, "train.seed cannot be negative (torch seeds are 0 or more)"),
            (self.train.grad_accum > 0, "train.grad_accum must be positive"),
            (0.0 <= self.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
            (MIN_RESOLUTION <= self.data.resolution <= MAX_RESOLUTION, f"data.resolution {sizes}"),
            (self.data.resolution % 8 == 0, "data.resolution must be a multiple of 8"),
            (0 <= self.data.final_steps <= self.train.steps,
             f"data.final_steps ({self.data.final_steps}) must be between 0 and train.steps ({self.train.steps}); "
             "for so short a run pass --data.final_steps 0 (no final phase) or fewer"),
            (self.data.final_resolution is None or MIN_RESOLUTION <= self.data.final_resolution <= MAX_RESOLUTION,
             f"data.final_resolution {sizes}"),
            (self.data.final_resolution is None or self.data.final_resolution % 8 == 0, "data.final_resolution must be a multiple of 8"),
            (self.data.holdout >= 0, "data.holdout cannot be negative (0: hold no images out)"),
            (self.data.num_workers >= 0, "data.num_workers cannot be negative"),
            (self.data.shuffle_buffer > 0, "data.shuffle_buffer must be positive"),
            (self.loss.disc_width > 0, "loss.disc_width must be positive"),
            (self.loss.disc_frames > 0, "loss.disc_frames must be positive"),
            (0 < self.data.frames <= MAX_FRAMES, f"data.frames must be between 1 and {MAX_FRAMES} (1 + 4k for the "
             "video VAEs)"),
            (self.data.max_stride > 0, "data.max_stride must be positive"),
            (self.loss.adv_start >= 0, "loss.adv_start cannot be negative"),
            (self.train.sample_images >= 0, "train.sample_images cannot be negative"),
            (self.data.max_zoom_out >= 1.0, "data.max_zoom_out must be >= 1"),
            (0.0 <= self.data.color_aug <= 1.0, "data.color_aug is a share of crops, between 0 and 1"),
            (self.loss.pixel_pool >= 1 and self.data.resolution % self.loss.pixel_pool == 0,
             "loss.pixel_pool must be at least 1 and divide data.resolution"),
            (self.loss.replay >= 0, "loss.replay cannot be negative"),
            (len(self.optim.betas) == 2, "optim.betas must have two values"),
            # Steps are divided by these intervals: 0 would fail after the first step.
            (self.train.log_every > 0, "train.log_every must be positive"),
            (self.train.sample_every > 0, "train.sample_every must be positive"),
            (self.train.checkpoint_every > 0, "train.checkpoint_every must be positive"),
            (self.optim.lr > 0, "optim.lr must be positive"),
            (self.optim.disc_lr >= 0, "optim.disc_lr must be >= 0"),
            (self.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (all(0 <= b < 1 for b in self.optim.betas), "optim.betas must be in [0, 1)"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0: no clipping)"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.student.init_ridge >= 0, "student.init_ridge must be >= 0"),
            (self.data.eval_resolution is None or self.data.eval_resolution >= MIN_RESOLUTION,
             f"data.eval_resolution must be at least {MIN_RESOLUTION} (or null: the training crop size only)"),
            (self.student.init_bridge_steps >= 0, "student.init_bridge_steps must be >= 0 (0: the linear fold only)"),
            (self.student.init_fit_images >= 1, "student.init_fit_images must be at least 1"),
            (self.student.init_fit_resolution is None or self.student.init_fit_resolution >= MIN_RESOLUTION,
             f"student.init_fit_resolution must be at least {MIN_RESOLUTION}"),
            (self.train.parts != "encoder" or self.loss.adv_weight == 0,
             "train.parts encoder trains no decoder for the discriminator to judge; set loss.adv_weight 0"),
            (self.train.parts == "both" or self.loss.encoder_adv_weight == 0,
             "loss.encoder_adv_weight judges the round trip, which needs train.parts both"),
            (isinstance(self.train.threads, str) or self.train.threads > 0,
             "train.threads must be auto, adaptive, torch or > 0"),
            (self.train.mixed_precision != "fp16", FP16_REFUSAL),
        ]
        for ok, message in checks:
            if not ok:
                raise invalid(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "name")

# CLI spellings that read better than the dotted names.
ALIASES = {
    "teacher": "teacher.name",
    "data": "data.path",
    "output": "train.output_dir",
    "output_dir": "train.output_dir",
    "resume": "train.resume",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "resolution": "data.resolution",
    "mixed_precision": "train.mixed_precision",
    "seed": "train.seed",
    "push_to_hub": "train.push_to_hub",
    "estimate_factors": "teacher.estimate_factors",
}


# YAML 1.1 (and so the command line) reads a bare no/off as false and yes/on as true.
_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Coerce `value` to `hint` where lossless (int -> float), else raise naming `where`."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool):
            value = next((w for w in _YAML_BOOL_WORDS[value] if w in allowed), value)
        if value in allowed and not isinstance(value, bool):
            return value
        raise ConfigError(f"Recipe field '{where}' must be one of {', '.join(map(str, allowed))}, got {value!r}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        arms = [arg for arg in args if arg is not type(None)]
        if len(arms) == 1:  # X | None: X's own message names the offending item
            return _check_type(value, arms[0], where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"Recipe field '{where}' must be {_describe(hint)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Recipe field '{where}' must be a list of {item.__name__}, got {value!r}.")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"Recipe field '{where}' must be {_describe(hint)}, got {value!r}.")


def _describe(hint: Any) -> str:
    names = [getattr(a, "__name__", str(a)) for a in typing.get_args(hint)] or [getattr(hint, "__name__", str(hint))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"Unknown recipe field '{prefix}{unknown[0]}'; known fields of '{prefix.rstrip('.') or 'recipe'}': "
            f"{', '.join(sorted(names))}."
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A shipped recipe by name, or a .yaml path (relative to `relative_to` when a recipe names its base)."""
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    if path.is_file():
        raise ConfigError(f"'{path}' is not a recipe: recipe files end in .yaml (rename it), or pass one of "
                          f"{', '.join(recipe_names())}.")
    sibling = next((path.with_name(path.name + ext) for ext in (".yaml", ".yml")
                    if path.with_name(path.name + ext).is_file()), None)
    if sibling is not None:
        key = f"write {BASE_KEY}: {sibling.name}" if relative_to is not None else f"pass {sibling}"
        raise ConfigError(f"No shipped recipe '{name_or_path}'; to use the file '{sibling}', {key}.")
    raise ConfigError(f"No recipe '{name_or_path}': pass one of {', '.join(recipe_names())} or a path to a .yaml file.")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `--section.field value` / `--alias value` pairs into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"Unexpected argument '{arg}': overrides are written --section.field value.")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 2
        else:  # a bare flag means true
            raw = "true"
            i += 1
        key = key.replace("-", "_")
        key = ALIASES.get(key, key)
        if "." not in key:
            raise ConfigError(
                f"Unknown option '--{key}': write recipe fields as --section.field (e.g. --train.steps 100)."
            )
        value = yaml.safe_load(raw) if raw != "" else None
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def merge_recipe_data(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it section by section: how a recipe extends its base and takes overrides."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipe_data(out[key], value)
        else:
            out[key] = value
    return out


def dotted_fields(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe dict as {"section.field": value}: the names the command line and the messages use."""
    fields: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            fields |= dotted_fields(value, f"{prefix}{key}.")
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def read_recipe_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a dict, with the recipe it names as `base` merged under it (recursively)."""
    if path.resolve() in seen:
        chain = " -> ".join(p.stem for p in (*seen, path.resolve()))
        raise ConfigError(f"Recipe {path} extends itself ({chain}); remove one of the '{BASE_KEY}:' lines.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Recipe file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                          "UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read recipe file {path}: {exc.strerror.lower()}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Recipe file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe file {path} must hold a mapping of sections, got {type(data).__name__}.")
    for section in SECTIONS:
        if section in data and data[section] is None:
            del data[section]  # a bare `train:` changes nothing
        elif section in data and not isinstance(data[section], dict):
            raise ConfigError(f"Recipe file {path}: section '{section}' must be a mapping of fields, got "
                              f"{data[section]!r}.")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    return merge_recipe_data(read_recipe_file(recipe_path(str(base), path.parent), (*seen, path.resolve())), data)


def load_recipe(name_or_path: str = "sd", overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Read a recipe file (and the base it extends), apply overrides (a nested dict or CLI tokens), validate."""
    path = recipe_path(name_or_path)
    data = read_recipe_file(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data = merge_recipe_data(data, overrides or {})
    data.setdefault("name", path.stem)
    return _build(Recipe, data, "").validate(frozenset(dotted_fields(overrides or {})))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return _build(Recipe, data, "").validate()


def check_positive(option: str, *values: int | None) -> None:
    """Command-line counts and sizes: 0 or less would fail, or silently mean something else, later."""
    for value in values:
        if value is not None and value <= 0:
            raise ConfigError(f"{option} must be positive, got {value}.")


def check_range(option: str, *values: float | None, low: float = 1, high: float | None = None,
                multiple: int | None = None, why: str = "") -> None:
    """Command-line sizes and counts: each between `low` and `high` (and a multiple of `multiple`, for the reason
    `why`), checked before any work or allocation, so a typo cannot run for an hour or fill the machine's memory."""
    for value in values:
        if value is None:
            continue
        if not math.isfinite(value) or value < low:
            floor = {1: "must be positive", 0: "cannot be negative"}.get(low, f"must be at least {low:g}")
            raise ConfigError(f"{option} {floor}, got {value:g}.")
        if high is not None and value > high:
            raise ConfigError(f"{option} must be at most {high:g} (more would not fit in memory or time), got "
                              f"{value:g}.")
        if multiple and value % multiple:
            raise ConfigError(f"{option} must be a multiple of {multiple}{why}, got {value:g}.")


def choose_recipe(recipe: str | None, overrides: list[str], is_video: Callable[[str], bool] | None = None) -> str:
    """An explicit --recipe wins; else the recipe named after --teacher, else `video` for a video teacher
    (`is_video(name)`), else the generic `sd` one."""
    if recipe:
        return recipe
    for flag, value in zip(overrides, overrides[1:]):
        if flag in ("--teacher", "--teacher.name") and value in recipe_names():
            return value
        if flag in ("--teacher", "--teacher.name") and is_video is not None and is_video(value):
            return "video"
    return "sd"
