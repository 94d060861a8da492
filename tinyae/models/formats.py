"""Weight formats of tiny autoencoders, and loading a student from any of them.

Two layouts hold the same tensors:

- diffusers' AutoencoderTiny folder: config.json + diffusion_pytorch_model.safetensors,
  keys `encoder.layers.N.*` / `decoder.layers.N.*` (the Student's own state_dict);
- the original TAESD pair `<prefix>_encoder.pth` / `<prefix>_decoder.pth` (or .safetensors)
  that ComfyUI and A1111/Forge load: bare nn.Sequential keys `N.*`, where the decoder
  starts with a parameter-free Clamp, so its indices are the diffusers ones plus one.

Architecture (latent channels, width, blocks per stage) is read off the tensors, not
the file name, and checked tensor by tensor against the Student it builds, so a file
of another layout fails with a sentence instead of a silent half-load. An encoder without
its decoder (taesana_encoder.pth, shipped here without the decoder upstream also publishes) loads
for training only (`encoder_only`): the decoder is then new, in the layout published for the
file's prefix (tinyae.models.families). `.pth` files are read with `torch.load(weights_only=True)`
only: weights from strangers must not run code.
"""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path

import torch

from tinyae.config import StudentConfig
from tinyae.errors import ConfigError, ExportError
from tinyae.models.families import FAMILIES, family_info
from tinyae.models.student import CONFIG_NAME, Student
from tinyae.models.variants import SIZES, StudentArch, resolve_arch, variant_for_teacher
from tinyae.utils.hub_access import fetch_snapshot, local_path_typo, looks_like_repo_id
from tinyae.utils.weights import read_weights

ENCODER_PREFIX = "encoder.layers."
DECODER_PREFIX = "decoder.layers."
CLAMP_OFFSET = 1  # the original decoder's index 0 is a Clamp module without parameters
PAIR_NAME = re.compile(r"(?P<prefix>.+)_(?P<role>encoder|decoder)\.(?P<ext>safetensors|pth|pt)")
PAIR_EXTENSIONS = ("safetensors", "pth", "pt")  # preference order: safetensors cannot hold code

logger = logging.getLogger(__name__)


def check_family(student: Student, family: str, source: object = "the student") -> None:
    """A 4-channel student named taef1 would load in ComfyUI and decode garbage: refuse early."""
    info = family_info(family)
    if student.latent_channels != info.latent_channels:
        raise ExportError(f"{source} has {student.latent_channels} latent channels but family '{family}' uses "
                          f"{info.latent_channels}; pick the family of the teacher it was distilled from.")


def layout_name(student: Student, family: str) -> str | None:
    """The size whose layout the student has for the family's variant (`tiny` is the published one), or None."""
    info = family_info(family)
    for size in SIZES:
        config = StudentConfig(variant=info.variant, size=size, latent_channels=info.latent_channels)
        if student.arch == resolve_arch(config):
            return size
    return None


def pair_prefix(student: Student, family: str) -> str:
    """The file-name prefix of a student's TAESD pair: the family's own (`taef2`) when clients can load it.

    ComfyUI, Forge and taesd.py build one fixed layout per prefix; a pair of another layout under
    that name is listed by ComfyUI and then crashes its sampler's previews. So a student of
    another size or shape is written under `<prefix>-<size>` (`taef2-nano`, `taesd-custom`), a
    name no client picks up (ComfyUI matches `<prefix>_decoder*`), and tinyae reads it back.
    """
    info = family_info(family)
    if info.prefix is None:
        video = (f", or export a video student of its latent space with --to taehv --family {family} (ComfyUI "
                 f"previews it with {info.taehv_model}, a TAEHV file)") if info.taehv_model else ""
        raise ExportError(f"Family '{family}' has no TAESD pair that ComfyUI or Forge load (they preview it with a "
                          f"video model of another architecture); export --to diffusers instead{video}.")
    size = layout_name(student, family)
    return info.prefix if size == "tiny" else f"{info.prefix}-{size or 'custom'}"


def prefix_family(prefix: str) -> str | None:
    """The family of a pair's file-name prefix: its own (`taef2`) or an off-layout one (`taef2-nano`)."""
    base = prefix.split("-")[0]
    return next((name for name, info in FAMILIES.items() if info.prefix == base), None)


# ---------------------------------------------------------------- key mapping


def to_taesd(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Student/AutoencoderTiny state dict -> (encoder, decoder) state dicts of the original TAESD."""
    encoder, decoder = {}, {}
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX):
            encoder[key[len(ENCODER_PREFIX):]] = value
        elif key.startswith(DECODER_PREFIX):
            index, rest = key[len(DECODER_PREFIX):].split(".", 1)
            decoder[f"{int(index) + CLAMP_OFFSET}.{rest}"] = value
        else:
            raise ExportError(f"State dict key '{key}' is not an AutoencoderTiny key (encoder.layers.* / "
                              "decoder.layers.*).")
    return encoder, decoder


def from_taesd(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_taesd`."""
    state = {ENCODER_PREFIX + key: value for key, value in encoder.items()}
    for key, value in decoder.items():
        index, rest = key.split(".", 1)
        state[f"{DECODER_PREFIX}{int(index) - CLAMP_OFFSET}.{rest}"] = value
    return state


# ---------------------------------------------------------------- architecture from tensors


def _layers(state: dict[str, torch.Tensor], source: str) -> list[tuple[int, str]]:
    """(index, "conv" | "block") for each layer with parameters, in order."""
    subkeys: dict[int, set[str]] = {}
    for key in state:
        match = re.fullmatch(r"(\d+)\.(.+)", key)
        if match is None:
            raise ExportError(f"{source} is not a TAESD file: key '{key}' is not of the form '<index>.<name>' "
                              "(a bare nn.Sequential state dict, as in taesd_encoder.pth).")
        subkeys.setdefault(int(match[1]), set()).add(match[2])
    layers = []
    for index in sorted(subkeys):
        names = subkeys[index]
        if "conv.0.weight" in names:
            if any(name.startswith("skip.") for name in names):
                raise ExportError(f"{source}: block {index} changes width inside the block (a 1x1 skip conv); "
                                  "tinyae's layouts change width in the convs between stages.")
            layers.append((index, "block"))
        elif "weight" in names:
            layers.append((index, "conv"))
        else:
            raise ExportError(f"{source}: layer {index} holds {sorted(names)}, which is no TAESD conv or block.")
    if len(layers) < 3 or layers[0][1] != "conv" or layers[-1][1] != "conv":
        raise ExportError(f"{source} does not start and end with a conv as a TAESD encoder/decoder does.")
    return layers


def _stages(state: dict[str, torch.Tensor], layers: list[tuple[int, str]]) -> tuple[list[int], list[int], list[bool]]:
    """Widths, block counts and pool flags of the stages between the first layer and the last conv.

    A stage is opened by a conv (its output width) and holds the blocks up to the next conv.
    """
    widths, blocks, pools = [], [], []
    for index, kind in layers[:-1]:
        if kind == "conv":
            widths.append(int(state[f"{index}.weight"].shape[0]))
            blocks.append(0)
            pools.append(False)
        else:
            blocks[-1] += 1
            pools[-1] = pools[-1] or f"{index}.pool.0.weight" in state
    return widths, blocks, pools


def _encoder_layout(encoder: dict[str, torch.Tensor], name: str) -> dict:
    """StudentArch fields of a TAESD encoder file, read from its tensors (the stride from where activations sit)."""
    layers = _layers(encoder, name)
    enc_in = int(encoder[f"{layers[0][0]}.weight"].shape[1])
    if enc_in != 3:
        raise ExportError(f"{name} takes {enc_in} input channels, not 3 (RGB): is it a decoder?")
    # Leading encoder convs followed by a parameterless layer (an activation) are the stride-2 stem (taesana's);
    # a single leading conv straight into a block is TAESD's entry conv.
    first_block = next((k for k, (_, kind) in enumerate(layers) if kind == "block"), len(layers) - 1)
    leading = layers[:first_block]
    gaps = [layers[k + 1][0] > index + 1 for k, (index, _) in enumerate(leading)]
    if all(gaps):
        stem = [int(encoder[f"{index}.weight"].shape[0]) for index, _ in leading]
        body = [(leading[-1][0], "conv")] + layers[first_block:]
    elif len(leading) == 1:
        stem, body = [], layers
    else:
        raise ExportError(f"{name} starts with {len(leading)} convs that are neither TAESD's entry conv nor "
                          "a stride-2 stem; tinyae cannot tell their strides.")
    widths, blocks, pools = _stages(encoder, body)
    return {"latent_channels": int(encoder[f"{layers[-1][0]}.weight"].shape[0]), "encoder_widths": widths,
            "encoder_blocks": blocks, "encoder_stem": stem, "pool": pools[-1]}


def _decoder_layout(decoder: dict[str, torch.Tensor], name: str) -> dict:
    """StudentArch fields of a TAESD decoder file (its index 0 is the parameterless Clamp)."""
    layers = _layers(decoder, name)
    dec_out = int(decoder[f"{layers[-1][0]}.weight"].shape[0])
    if dec_out != 3:
        raise ExportError(f"{name} writes {dec_out} channels, not 3 (RGB): is it an encoder?")
    widths, blocks, pools = _stages(decoder, layers)
    return {"latent_channels": int(decoder[f"{layers[0][0]}.weight"].shape[1]), "decoder_widths": widths,
            "decoder_blocks": blocks, "pool": pools[0]}


def arch_from_pair(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor] | None,
                   names: tuple[str, str] = ("the encoder", "the decoder"), variant: str | None = None) -> StudentArch:
    """A TAESD pair's layout, read from its tensors.

    With `decoder` None (an encoder alone, such as the taesana one shipped here) the decoder's layout is
    `variant`'s (else the default one for the encoder's downscale), so a fresh decoder can be trained.
    """
    enc = _encoder_layout(encoder, names[0])
    if decoder is None:
        downscale = 2 ** (len(enc["encoder_stem"]) + len(enc["encoder_widths"]) - 1)
        name = variant or variant_for_teacher(downscale, "flux2" if enc["pool"] else None)
        standard = resolve_arch(StudentConfig(variant=name, latent_channels=enc["latent_channels"]))
        dec = {"latent_channels": enc["latent_channels"], "decoder_widths": standard.decoder_widths,
               "decoder_blocks": standard.decoder_blocks, "pool": enc["pool"]}
    else:
        dec = _decoder_layout(decoder, names[1])
    if enc["latent_channels"] != dec["latent_channels"]:
        raise ExportError(f"{names[0]} writes {enc['latent_channels']} latent channels but {names[1]} reads "
                          f"{dec['latent_channels']}: the two files are not a pair.")
    try:  # pool branches anywhere but the deepest stages fail the tensor-by-tensor load
        return StudentArch(**{**enc, **dec, "pool": enc["pool"] or dec["pool"]})
    except ConfigError as exc:
        raise ExportError(f"{names[0]} / {names[1]}: {exc}") from None


# ---------------------------------------------------------------- reading files


def is_pair(path: str | Path) -> bool:
    """A TAESD pair: one of its files, a prefix such as `dir/taef2`, or a folder holding one and no config.json."""
    path = Path(path)
    if path.is_file():
        return PAIR_NAME.fullmatch(path.name) is not None
    if path.is_dir():
        return not (path / CONFIG_NAME).exists() and any(PAIR_NAME.fullmatch(p.name) for p in path.iterdir())
    return path.parent.is_dir() and any(path.parent.glob(f"{glob.escape(path.name)}_encoder.*"))


def find_pair(path: str | Path, family: str | None = None,
              decoder_optional: bool = False) -> tuple[Path, Path | None]:
    """(encoder, decoder) files from a folder, either file of the pair, or a prefix like `dir/taesdxl`.

    With `decoder_optional`, an encoder alone (taesana_encoder.pth) gives (encoder, None).
    """
    path = Path(path)
    if path.is_file():
        match = PAIR_NAME.fullmatch(path.name)
        if match is None:
            raise ExportError(f"'{path}' is not named like a TAESD file (<prefix>_encoder.pth, "
                              "<prefix>_decoder.safetensors, ...).")
        folder, prefix = path.parent, match["prefix"]
    elif path.is_dir():
        folder = path
        prefixes = sorted({m["prefix"] for p in path.iterdir() if (m := PAIR_NAME.fullmatch(p.name))})
        if family is not None:
            prefix = family_info(family).prefix
            if prefix is None:
                raise ExportError(f"Family '{family}' has no TAESD pair format; load its diffusers folder instead.")
            ours = [p for p in prefixes if prefix_family(p) == family]
            if prefix not in prefixes and len(ours) != 1:
                found = f"; it has {', '.join(prefixes)}" if prefixes else ""
                which = f" (several: {', '.join(ours)}; pass the path of one file)" if ours else ""
                raise ExportError(f"'{path}' holds no single {prefix}_encoder/{prefix}_decoder pair for family "
                                  f"'{family}'{which or found}.")
            prefix = prefix if prefix in prefixes else ours[0]
        elif len(prefixes) == 1:
            prefix = prefixes[0]
        elif not prefixes:
            raise ExportError(f"'{path}' holds neither an AutoencoderTiny model (config.json) nor a TAESD pair "
                              "(<prefix>_encoder.pth + <prefix>_decoder.pth).")
        else:
            raise ExportError(f"'{path}' holds several TAESD pairs ({', '.join(prefixes)}); pass a family "
                              f"({', '.join(FAMILIES)}) or the path of one file.")
    else:
        folder, prefix = path.parent, path.name
    encoder = _pick(folder, prefix, "encoder")
    if decoder_optional and not any((folder / f"{prefix}_decoder.{ext}").is_file() for ext in PAIR_EXTENSIONS):
        return encoder, None
    return encoder, _pick(folder, prefix, "decoder")


def _pick(folder: Path, prefix: str, role: str) -> Path:
    for ext in PAIR_EXTENSIONS:
        candidate = folder / f"{prefix}_{role}.{ext}"
        if candidate.is_file():
            return candidate
    raise ExportError(f"No {prefix}_{role}.safetensors or .pth in '{folder}': a TAESD model is two files, "
                      "encoder and decoder, side by side (an encoder alone is read only to initialise training, "
                      "as --student.init).")


def load_taesd(encoder_path: str | Path, decoder_path: str | Path | None = None) -> Student:
    """A Student from a TAESD pair; without `decoder_path`, its decoder is new (the family's layout) and untrained."""
    encoder = read_weights(encoder_path)
    prefix = PAIR_NAME.fullmatch(Path(encoder_path).name)["prefix"]
    family = prefix_family(prefix)
    if decoder_path is None:
        arch = arch_from_pair(encoder, None, (f"'{encoder_path}'", "its decoder"),
                              FAMILIES[family].variant if family else None)
        student = Student(arch).load_weights(from_taesd(encoder, {}), f"The encoder '{encoder_path}'", "encoder")
        logger.warning("'%s' comes without its decoder: the decoder starts untrained.", encoder_path)
        student.untrained = ("decoder",)
    else:
        decoder = read_weights(decoder_path)
        arch = arch_from_pair(encoder, decoder, (f"'{encoder_path}'", f"'{decoder_path}'"))
        student = Student(arch).load_weights(from_taesd(encoder, decoder),
                                             f"The pair '{encoder_path}' + '{decoder_path}'")
    student.family = checked_pair_family(family, prefix, student)
    return student


def checked_pair_family(family: str | None, prefix: str, student: Student) -> str | None:
    """The family a pair's name claims, if its tensors agree (a renamed TAEF2 pair is not an SD one)."""
    if family is not None and student.latent_channels != FAMILIES[family].latent_channels:
        fits = [name for name, info in FAMILIES.items() if info.latent_channels == student.latent_channels]
        raise ExportError(f"The pair is named {prefix}_* ({family}, {FAMILIES[family].latent_channels} latent "
                          f"channels) but its tensors have {student.latent_channels}: rename it for its family "
                          f"({', '.join(fits) or 'none tinyae knows'}).")
    return family


def load_student(path: str | Path, family: str | None = None, encoder_only: bool = False) -> Student:
    """A float32 Student from an AutoencoderTiny folder, a TAESD pair, a checkpoint or a Hub repo id.

    `path` may be a folder (AutoencoderTiny/TinyAutoencoder, a TAESD pair, a training checkpoint
    with `student_ema/` or a training output with `student/`), either file of a pair, a prefix
    such as `models/vae_approx/taesdxl`, or an `owner/name` Hub repo. `family` picks the pair in
    a folder holding several and checks the latent channels. `encoder_only` accepts an encoder
    without its decoder (taesana's, as shipped here): the decoder is then new, to be trained.
    """
    path = Path(path)
    is_prefix = path.parent.is_dir() and any(path.parent.glob(f"{glob.escape(path.name)}_encoder.*"))
    if not path.exists() and not is_prefix:
        if not looks_like_repo_id(str(path)):
            typo = local_path_typo(str(path))
            where = f" (nothing there, though '{typo}' exists: a typo?)" if typo else ""
            raise ExportError(f"No student weights at '{path}'{where}: pass an AutoencoderTiny folder, a TAESD pair "
                              "(folder, file or prefix), a checkpoint folder or a Hub repo id.")
        path = fetch_snapshot(str(path), [CONFIG_NAME, "diffusion_pytorch_model*.safetensors", "*_encoder.*",
                                          "*_decoder.*"], "the student")
    for sub in ("student_ema", "student"):  # a training checkpoint, a training output folder
        if path.is_dir() and (path / sub / CONFIG_NAME).is_file():
            path = path / sub
            break
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        student = Student.from_pretrained(path)
    else:
        student = load_taesd(*find_pair(path, family, decoder_optional=encoder_only))
    if family is not None:
        check_family(student, family, f"'{path}'")
    return student
