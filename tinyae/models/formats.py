"""Weight formats of tiny autoencoders, and loading a student from any of them.

Two layouts hold the same tensors:

- diffusers' AutoencoderTiny folder: config.json + diffusion_pytorch_model.safetensors,
  keys `encoder.layers.N.*` / `decoder.layers.N.*` (the Student's own state_dict);
- the original TAESD pair `<prefix>_encoder.pth` / `<prefix>_decoder.pth` (or .safetensors)
  that ComfyUI and A1111/Forge load: bare nn.Sequential keys `N.*`, where the decoder
  starts with a parameter-free Clamp, so its indices are the diffusers ones plus one.

Architecture (latent channels, width, blocks per stage) is read off the tensors, not
the file name, and checked tensor by tensor against the Student it builds, so a file
of another layout fails with a sentence instead of a silent half-load. `.pth` files are
read with `torch.load(weights_only=True)` only: weights from strangers must not run code.
"""

from __future__ import annotations

import dataclasses
import glob
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyae.config import StudentConfig
from tinyae.errors import ConfigError, ExportError
from tinyae.models.student import CONFIG_NAME, Student
from tinyae.models.variants import StudentArch, resolve_arch
from tinyae.utils.hub_access import fetch_snapshot, local_path_typo, looks_like_repo_id
from tinyae.utils.weights import read_weights

ENCODER_PREFIX = "encoder.layers."
DECODER_PREFIX = "decoder.layers."
CLAMP_OFFSET = 1  # the original decoder's index 0 is a Clamp module without parameters
PAIR_NAME = re.compile(r"(?P<prefix>.+)_(?P<role>encoder|decoder)\.(?P<ext>safetensors|pth|pt)")
PAIR_EXTENSIONS = ("safetensors", "pth", "pt")  # preference order: safetensors cannot hold code


@dataclass(frozen=True)
class Family:
    prefix: str  # TAESD file-name prefix that ComfyUI / Forge look for
    latent_channels: int
    repo_id: str | None  # the published TAESD of this family in diffusers layout on the Hub, if there is one
    variant: str = "taesd"  # the layout ComfyUI builds for this prefix (tinyae.models.variants)


FAMILIES: dict[str, Family] = {
    "sd": Family("taesd", 4, "madebyollin/taesd"),
    "sdxl": Family("taesdxl", 4, "madebyollin/taesdxl"),
    "sd3": Family("taesd3", 16, "madebyollin/taesd3"),
    "flux": Family("taef1", 16, "madebyollin/taef1"),
    "flux2": Family("taef2", 32, None, "flux_2"),
    "sana": Family("taesana", 32, None, "f32"),
}


def family_info(family: str) -> Family:
    if family not in FAMILIES:
        raise ExportError(f"Unknown family '{family}'; pass one of {', '.join(FAMILIES)}.")
    return FAMILIES[family]


def check_family(student: Student, family: str, source: object = "the student") -> None:
    """A 4-channel student named taef1 would load in ComfyUI and decode garbage: refuse early.

    ComfyUI and Forge build each prefix's fixed upstream layout, so a pair of another
    layout (a slim student, say) is written with a warning: tinyae reads it, they do not.
    """
    info = family_info(family)
    if student.latent_channels != info.latent_channels:
        raise ExportError(f"{source} has {student.latent_channels} latent channels but family '{family}' uses "
                          f"{info.latent_channels}; pick the family of the teacher it was distilled from.")
    standard = resolve_arch(StudentConfig(variant=info.variant, latent_channels=info.latent_channels))
    if student.arch != dataclasses.replace(standard, act_fn=student.arch.act_fn,
                                           upsample_fn=student.arch.upsample_fn) or student.arch.act_fn != "relu":
        warnings.warn(f"{source} is not in the '{info.variant}' layout that ComfyUI and Forge build for "
                      f"{info.prefix}_*: tinyae.load_student reads its pair, they do not (use the diffusers "
                      "export there).", stacklevel=2)


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


def arch_from_pair(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor],
                   names: tuple[str, str] = ("the encoder", "the decoder")) -> StudentArch:
    """A TAESD pair's layout, read from its tensors (stride and activations from where parameterless layers sit)."""
    enc_layers = _layers(encoder, names[0])
    dec_layers = [(i - CLAMP_OFFSET, kind) for i, kind in _layers(decoder, names[1])]
    enc_in = int(encoder[f"{enc_layers[0][0]}.weight"].shape[1])
    dec_out = int(decoder[f"{dec_layers[-1][0] + CLAMP_OFFSET}.weight"].shape[0])
    if enc_in != 3:
        raise ExportError(f"{names[0]} takes {enc_in} input channels, not 3 (RGB): is it a decoder?")
    if dec_out != 3:
        raise ExportError(f"{names[1]} writes {dec_out} channels, not 3 (RGB): is it an encoder?")
    # Leading encoder convs followed by a parameterless layer (an activation) are the stride-2 stem (taesana's);
    # a single leading conv straight into a block is TAESD's entry conv.
    first_block = next((k for k, (_, kind) in enumerate(enc_layers) if kind == "block"), len(enc_layers) - 1)
    leading = enc_layers[:first_block]
    gaps = [enc_layers[k + 1][0] > index + 1 for k, (index, _) in enumerate(leading)]
    if all(gaps):
        stem = [int(encoder[f"{index}.weight"].shape[0]) for index, _ in leading]
        enc_body = [(leading[-1][0], "conv")] + enc_layers[first_block:]
    elif len(leading) == 1:
        stem, enc_body = [], enc_layers
    else:
        raise ExportError(f"{names[0]} starts with {len(leading)} convs that are neither TAESD's entry conv nor "
                          "a stride-2 stem; tinyae cannot tell their strides.")
    enc_widths, enc_blocks, enc_pools = _stages(encoder, enc_body)
    dec_widths, dec_blocks, dec_pools = _stages(decoder, [(i + CLAMP_OFFSET, k) for i, k in dec_layers])
    pool = enc_pools[-1] or dec_pools[0]  # pool branches anywhere else fail the tensor-by-tensor load
    latent_channels = int(encoder[f"{enc_layers[-1][0]}.weight"].shape[0])
    decoder_in = int(decoder[f"{dec_layers[0][0] + CLAMP_OFFSET}.weight"].shape[1])
    if latent_channels != decoder_in:
        raise ExportError(f"{names[0]} writes {latent_channels} latent channels but {names[1]} reads {decoder_in}: "
                          "the two files are not a pair.")
    try:
        return StudentArch(latent_channels=latent_channels, encoder_widths=enc_widths, decoder_widths=dec_widths,
                           encoder_blocks=enc_blocks, decoder_blocks=dec_blocks, encoder_stem=stem, pool=pool)
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


def family_of_pair(path: str | Path) -> str | None:
    """The family whose file names a pair carries (taef2_* -> flux2), if any."""
    encoder, _ = find_pair(path)
    prefix = PAIR_NAME.fullmatch(encoder.name)["prefix"]
    return next((name for name, info in FAMILIES.items() if info.prefix == prefix), None)


def find_pair(path: str | Path, family: str | None = None) -> tuple[Path, Path]:
    """(encoder, decoder) files from a folder, either file of the pair, or a prefix like `dir/taesdxl`."""
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
            if prefix not in prefixes:
                found = f"; it has {', '.join(prefixes)}" if prefixes else ""
                raise ExportError(f"'{path}' holds no {prefix}_encoder/{prefix}_decoder pair for family "
                                  f"'{family}'{found}.")
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
    return _pick(folder, prefix, "encoder"), _pick(folder, prefix, "decoder")


def _pick(folder: Path, prefix: str, role: str) -> Path:
    for ext in PAIR_EXTENSIONS:
        candidate = folder / f"{prefix}_{role}.{ext}"
        if candidate.is_file():
            return candidate
    raise ExportError(f"No {prefix}_{role}.safetensors or .pth in '{folder}': a TAESD model is two files, "
                      "encoder and decoder, side by side.")


def load_taesd(encoder_path: str | Path, decoder_path: str | Path) -> Student:
    encoder, decoder = read_weights(encoder_path), read_weights(decoder_path)
    arch = arch_from_pair(encoder, decoder, (f"'{encoder_path}'", f"'{decoder_path}'"))
    return Student(arch).load_weights(from_taesd(encoder, decoder), f"The pair '{encoder_path}' + '{decoder_path}'")


def load_student(path: str | Path, family: str | None = None) -> Student:
    """A float32 Student from an AutoencoderTiny folder, a TAESD pair, a checkpoint or a Hub repo id.

    `path` may be a folder (AutoencoderTiny, a TAESD pair, a training checkpoint with
    `student_ema/` or a training output with `student/`), either file of a pair, a prefix
    such as `models/vae_approx/taesdxl`, or an `owner/name` Hub repo. `family` picks the
    pair in a folder holding several and checks the latent channels.
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
        student = load_taesd(*find_pair(path, family))
    if family is not None:
        check_family(student, family, f"'{path}'")
    return student
