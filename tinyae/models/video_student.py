"""The video student: a TAEHV-layout tiny autoencoder for the video VAEs (Wan, HunyuanVideo, LTX, CogVideoX).

Each frame goes through 2D convs; time enters in three ways only, so the model stays causal
and can stream:

- `MemBlock`: a residual block that sees the current frame beside the previous frame's input
  (zeros before the first frame);
- `TPool` (encoder): `stride` consecutive frames folded into channels, then a 1x1 conv;
- `TGrow` (decoder): a 1x1 conv to `stride` times the channels, unfolded into that many frames.

Images are pixel-unshuffled by the model's patch size before the first conv, so space shrinks
by 8 x patch and time by 4 (8 for LTX). The state dict is keyed `encoder.N.*` / `decoder.N.*`
(`decoder.1.weight` the latent conv, `decoder.22.*` the output conv): the layout of
madebyollin/taehv's `taehv.py` and of ComfyUI's `comfy/taesd/taehv.py`, so the published
files load here and tinyae's exports load there. Internally frames are in [0, 1], as there;
the public `encode`/`decode` follow diffusers (NCTHW, [-1, 1]) and the latents are the ones the
diffusion model sees, with no scale or shift.

Frame rule: 1 + 4k frames encode to 1 + k latents (input padded at the end with its last
frame to a multiple of the time factor), and T latents decode to 4T - 3 frames (the decoder's
first 3 frames are dropped). Parallel decoding runs all frames through each layer at once;
streaming decoding (`decode_frames`) pushes one latent at a time through the layers and yields
frames as they are ready, holding one frame per layer: the same frames, in bounded memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from tinyae.errors import ExportError
from tinyae.utils.weights import read_weights


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


def activation(name: str) -> nn.Module:
    # lighttaehy1_5 (ComfyUI) uses LeakyReLU(0.2); every published TAEHV file uses ReLU.
    return nn.LeakyReLU(0.2) if name == "leaky_relu" else nn.ReLU()


class SoftClamp(nn.Module):
    """tanh(x / 3) * 3: latents far out of range cannot blow up the decoder."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block over [frame, previous frame's input]; `conv.0/2/4`, a 1x1 `skip` when widths differ."""

    def __init__(self, n_in: int, n_out: int, act: str = "relu"):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * n_in, n_out), activation(act), conv(n_out, n_out), activation(act),
                                  conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = activation(act)

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """(N*T, C, H, W) -> (N*T/stride, C, H, W): each run of `stride` frames stacked on channels, mixed by a 1x1."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width * stride, width, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        nt, c, h, w = x.shape
        return self.conv(x.reshape(nt // self.stride, self.stride * c, h, w))


class TGrow(nn.Module):
    """(N*T, C, H, W) -> (N*T*stride, C, H, W): a 1x1 to `stride` x C channels, read as `stride` frames in order."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        nt, c, h, w = x.shape
        return self.conv(x).reshape(nt * self.stride, c, h, w)


@dataclass(frozen=True)
class VideoArch:
    """A TAEHV layout. Defaults are TAEHV's (HunyuanVideo / Wan 2.1: 16 channels, no patches)."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel-unshuffle factor before the encoder (and shuffle after the decoder)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)
    decoder_space_upscale: tuple[bool, bool, bool] = (True, True, True)
    encoder_width: int = 64
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    act_fn: str = "relu"
    # taecvx: CogVideoX pads at the start, so an even number of latents keeps all 4T decoded frames
    keep_frames_for_even_latents: bool = False

    def __post_init__(self):
        for name in ("encoder_time_downscale", "decoder_time_upscale", "decoder_space_upscale", "decoder_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.decoder_widths) != 4 or any(len(getattr(self, n)) != 3 for n in
                                                 ("encoder_time_downscale", "decoder_time_upscale",
                                                  "decoder_space_upscale")):
            raise ExportError("A TAEHV layout has 3 encoder and 3 decoder stages and 4 decoder widths.")
        if self.act_fn not in ("relu", "leaky_relu"):
            raise ExportError(f"Unknown act_fn '{self.act_fn}' for a video student; use relu or leaky_relu.")

    @property
    def time_downscale(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def time_upscale(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def downscale(self) -> int:
        return 8 * self.patch_size

    def latent_frames(self, frames: int) -> int:
        """Latents for `frames` input frames: 1 + 4k -> 1 + k (input padded to a multiple of the time factor)."""
        return -(-frames // self.time_downscale)

    def decoded_frames(self, latents: int) -> int:
        """Frames decoded from `latents` latents: 4T - 3 (the decoder's warm-up frames are dropped)."""
        if self.keep_frames_for_even_latents and latents % 2 == 0:
            return latents * self.time_upscale
        return max(0, latents * self.time_upscale - (self.time_upscale - 1))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VideoModel:
    """A published TAEHV-format model: its layout, the teacher it stands for, and where its files are looked for."""

    arch: VideoArch
    teacher: str  # the tinyae teacher preset of its latent space
    comfyui_name: str | None = None  # the file name ComfyUI's VAELoader / previews look for (models/vae_approx)
    comfyui_fp16: bool | None = None  # the dtype ComfyUI's loader needs to read it in this space (None: either)
    note: str = ""


# File names are madebyollin/taehv's (taehv.py picks the layout from them). ComfyUI (comfy/sd.py, nodes.py,
# latent_preview.py) recognises a TAEHV file by `decoder.22.bias`, reads the latent channels off
# `decoder.1.weight` and patches 2x2 when there are 48 or 32; a 16-channel file in fp16 is taken as
# HunyuanVideo's and gets HunyuanVideo's scale (its latents in, the diffusion space out), in fp32 as Wan 2.1's
# with no scaling. It has no 8x-time (LTX) or CogVideoX TAEHV path.
VIDEO_MODELS: dict[str, VideoModel] = {
    "taehv": VideoModel(VideoArch(16, 1), "hunyuan-video", "taehv", True, "HunyuanVideo"),
    "taew2_1": VideoModel(VideoArch(16, 1), "wan2.1", "lighttaew2_1", False, "Wan 2.1 (and Qwen-Image's VAE)"),
    "taew2_2": VideoModel(VideoArch(48, 2), "wan2.2", "lighttaew2_2", None, "Wan 2.2 TI2V-5B"),
    "taehv1_5": VideoModel(VideoArch(32, 2), "hunyuan-video-1.5", None, None, "HunyuanVideo 1.5"),
    "taecvx": VideoModel(VideoArch(16, 1, keep_frames_for_even_latents=True), "cogvideox", None, None, "CogVideoX"),
    "taeos1_3": VideoModel(VideoArch(16, 1), "open-sora-1.3", None, None, "Open-Sora 1.3"),
    "taeltx_2": VideoModel(VideoArch(128, 4, (True, True, True), (True, True, True)), "ltx-video", None, None,
                           "LTX-Video / LTX-2 (8x time)"),
}


def video_model(name: str) -> VideoModel:
    if name not in VIDEO_MODELS:
        raise ExportError(f"Unknown TAEHV model '{name}'; pass one of {', '.join(VIDEO_MODELS)}.")
    return VIDEO_MODELS[name]


def build_encoder(arch: VideoArch) -> nn.Sequential:
    """0 conv(3p², w), 1 act, then per stage [TPool, stride-2 conv (no bias), 3 MemBlocks] (2-16), 17 conv(w, C)."""
    w = arch.encoder_width
    layers: list[nn.Module] = [conv(3 * arch.patch_size ** 2, w), activation(arch.act_fn)]
    for pool in arch.encoder_time_downscale:
        layers += [TPool(w, 2 if pool else 1), conv(w, w, stride=2, bias=False)]
        layers += [MemBlock(w, w, arch.act_fn) for _ in range(3)]
    layers.append(conv(w, arch.latent_channels))
    return nn.Sequential(*layers)


def build_decoder(arch: VideoArch) -> nn.Sequential:
    """0 clamp, 1 conv(C, w0), 2 act, per stage [3 MemBlocks, upsample, TGrow, conv (no bias)] (3-20), 21 act, 22 conv."""
    widths = arch.decoder_widths
    layers: list[nn.Module] = [SoftClamp(), conv(arch.latent_channels, widths[0]), activation(arch.act_fn)]
    for stage, (grow, up) in enumerate(zip(arch.decoder_time_upscale, arch.decoder_space_upscale)):
        w = widths[stage]
        layers += [MemBlock(w, w, arch.act_fn) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2 if up else 1), TGrow(w, 2 if grow else 1),
                   conv(w, widths[stage + 1], bias=False)]
    layers += [activation(arch.act_fn), conv(widths[3], 3 * arch.patch_size ** 2)]
    return nn.Sequential(*layers)


def run_parallel(layers: nn.Sequential, x: Tensor) -> Tensor:
    """NTCHW through the layers, all frames of a layer at once; each MemBlock sees its input shifted by a frame."""
    n = x.shape[0]
    h = x.flatten(0, 1)
    for layer in layers:
        if isinstance(layer, MemBlock):
            frames = h.unflatten(0, (n, -1))
            past = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], 1)
            h = layer(h, past.flatten(0, 1))
        else:
            h = layer(h)
    return h.unflatten(0, (n, -1))


class StreamState:
    """What the layers remember between chunks of frames: per MemBlock the last frame of its previous input, per
    TPool the frames still short of a full group. Chunks go through every layer depth-first, and what a TGrow
    grows is cut again into chunks of at most `chunk` frames, so no layer holds more than `chunk` frames at once
    (plus one of memory), whatever the length of the video. chunk=1 is streaming frame by frame."""

    def __init__(self, layers: nn.Sequential, chunk: int = 1):
        if chunk < 1:
            raise ExportError(f"A decode chunk must hold at least 1 frame, got {chunk}.")
        self.layers, self.chunk = layers, chunk
        self.memory: dict[int, Tensor] = {}

    def push(self, x: Tensor, start: int = 0) -> Iterator[Tensor]:
        """Feed frames (N, t, C, H, W) to layer `start`; yields the chunks (N, t', C', H', W') that leave the last
        layer, in order."""
        n = x.shape[0]
        for index in range(start, len(self.layers)):
            layer = self.layers[index]
            if isinstance(layer, MemBlock):
                past = self.memory.get(index)
                past = torch.zeros_like(x[:, :1]) if past is None else past
                self.memory[index] = x[:, -1:].clone()  # a copy: a view would keep the whole chunk alive
                x = layer(x.flatten(0, 1), torch.cat([past, x[:, :-1]], 1).flatten(0, 1)).unflatten(0, (n, -1))
            elif isinstance(layer, TPool):
                if index in self.memory:
                    x = torch.cat([self.memory.pop(index), x], 1)
                whole = x.shape[1] - x.shape[1] % layer.stride
                if whole < x.shape[1]:
                    self.memory[index] = x[:, whole:].clone()
                if whole == 0:
                    return
                x = layer(x[:, :whole].flatten(0, 1)).unflatten(0, (n, -1))
            elif isinstance(layer, TGrow):
                grown = layer(x.flatten(0, 1)).unflatten(0, (n, -1))
                del x
                for piece in grown.split(self.chunk, 1):
                    yield from self.push(piece, index + 1)
                return
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, (n, -1))
        yield x


class VideoStudent(ModelMixin, ConfigMixin):
    """A TAEHV-layout video autoencoder usable as a diffusers video VAE (NCTHW, [-1, 1]).

    `encode(x).latents` / `decode(z).sample` as diffusers' VAEs, `from_pretrained` /
    `save_pretrained`; `decode(z, parallel=False)` and `decode_frames(z)` stream.
    """

    @register_to_config
    def __init__(self, latent_channels: int = 16, patch_size: int = 1,
                 encoder_time_downscale: tuple[bool, ...] = (True, True, False),
                 decoder_time_upscale: tuple[bool, ...] = (False, True, True),
                 decoder_space_upscale: tuple[bool, ...] = (True, True, True), encoder_width: int = 64,
                 decoder_widths: tuple[int, ...] = (256, 128, 64, 64), act_fn: str = "relu",
                 keep_frames_for_even_latents: bool = False, scaling_factor: float = 1.0,
                 taehv_name: str | None = None, decode_chunk_size: int | None = None,
                 teacher: str | None = None, teacher_class: str | None = None):
        super().__init__()
        self.taehv_name = taehv_name  # the published model whose latent space and files it stands for
        # The teacher it was distilled from and that teacher's VAE class (None in folders from before they were
        # recorded, and for published files): export refuses a --model of another latent space by them.
        self.teacher, self.teacher_class = teacher, teacher_class
        self.decode_chunk_size = None
        if decode_chunk_size is not None:
            self.enable_chunking(decode_chunk_size)
        self.arch = VideoArch(latent_channels, patch_size, tuple(encoder_time_downscale), tuple(decoder_time_upscale),
                              tuple(decoder_space_upscale), encoder_width, tuple(decoder_widths), act_fn,
                              keep_frames_for_even_latents)
        self.encoder = build_encoder(self.arch)
        self.decoder = build_decoder(self.arch)
        # What video pipelines read on pipe.vae to size latents and undo their normalisation (none: the student
        # already reads the normalised latents): WanPipeline the config entries, HunyuanVideo/LTX/CogVideoX pipelines
        # the attributes. Written to config.json for them, dropped again on loading.
        self.temporal_compression_ratio = self.arch.time_downscale
        self.spatial_compression_ratio = self.arch.downscale
        self.temperal_downsample = list(self.arch.encoder_time_downscale)
        self.register_to_config(z_dim=latent_channels, latents_mean=[0.0] * latent_channels,
                                latents_std=[1.0] * latent_channels, scale_factor_temporal=self.arch.time_downscale,
                                scale_factor_spatial=self.arch.downscale)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        derived = ("z_dim", "latents_mean", "latents_std", "scale_factor_temporal", "scale_factor_spatial")
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k not in derived}, **kwargs)

    @classmethod
    def from_arch(cls, arch: VideoArch, taehv_name: str | None = None, teacher: str | None = None,
                  teacher_class: str | None = None) -> "VideoStudent":
        return cls(**arch.to_dict(), taehv_name=taehv_name, teacher=teacher, teacher_class=teacher_class)

    def record_teacher(self, name: str, vae_class: str) -> None:
        """Note (in config.json too) the teacher whose latent space the student learns."""
        self.teacher, self.teacher_class = name, vae_class
        self.register_to_config(teacher=name, teacher_class=vae_class)

    @classmethod
    def published(cls, name: str, teacher: str | None = None, teacher_class: str | None = None) -> "VideoStudent":
        """An untrained student in the layout of a published model (`taew2_1`, `taehv`, ...)."""
        return cls.from_arch(video_model(name).arch, name, teacher, teacher_class)

    # -- the [0, 1], NTCHW core (the frames upstream's layers see) --------------------------------------------

    def encode_frames01(self, x: Tensor, parallel: bool = True) -> Tensor:
        """NTCHW frames in [0, 1] -> NTCHW latents."""
        if self.arch.patch_size > 1:
            x = F.pixel_unshuffle(x, self.arch.patch_size)
        short = -x.shape[1] % self.arch.time_downscale
        if short:
            x = torch.cat([x, x[:, -1:].expand(-1, short, -1, -1, -1)], 1)
        if parallel:
            return run_parallel(self.encoder, x)
        state = StreamState(self.encoder)
        return torch.cat([out for frame in x.split(1, 1) for out in state.push(frame)], 1)

    def _finish(self, frames: Tensor) -> Tensor:
        return F.pixel_shuffle(frames, self.arch.patch_size) if self.arch.patch_size > 1 else frames

    def _trim(self, latents: int) -> int:
        return self.arch.time_upscale * latents - self.arch.decoded_frames(latents)

    def decode_frames01(self, z: Tensor, parallel: bool = True, chunk_size: int | None = None) -> Tensor:
        """NTCHW latents -> NTCHW frames, ~[0, 1] (not clamped), 4T - 3 of them. `chunk_size`: see `decode`."""
        if not parallel:
            return torch.stack(list(self.stream_frames01(z)), 1)
        if chunk_size is None:
            return self._finish(run_parallel(self.decoder, z))[:, self._trim(z.shape[1]):]
        return torch.cat(list(self.stream_chunks01(z, chunk_size)), 1)

    def stream_chunks01(self, z: Tensor, chunk_size: int) -> Iterator[Tensor]:
        """Yields (N, t, 3, H, W) frames in [0, 1] in order, no layer ever holding more than `chunk_size` frames."""
        state, skip = StreamState(self.decoder, chunk_size), self._trim(z.shape[1])
        for latents in z.split(chunk_size, 1):
            for frames in state.push(latents):
                dropped = min(skip, frames.shape[1])
                skip -= dropped
                if dropped < frames.shape[1]:
                    yield self._finish(frames[:, dropped:])

    def stream_frames01(self, z: Tensor) -> Iterator[Tensor]:
        """Yields (N, 3, H, W) frames in [0, 1] one at a time, holding one frame per layer."""
        for frame in self.stream_chunks01(z, 1):
            yield frame[:, 0]

    # -- diffusers' convention: NCTHW, [-1, 1] ------------------------------------------------------------------

    def enable_chunking(self, chunk_size: int = 1) -> None:
        """Decode in parallel chunk by chunk from now on: at most `chunk_size` frames go through a layer at once,
        the same frames in bounded memory (as diffusers' `enable_slicing`, but along time)."""
        if chunk_size < 1:
            raise ExportError(f"A decode chunk must hold at least 1 frame, got {chunk_size}.")
        self.decode_chunk_size = chunk_size

    def disable_chunking(self) -> None:
        """Decode all frames through each layer at once again (fastest where memory allows)."""
        self.decode_chunk_size = None

    def encode(self, x: Tensor, return_dict: bool = True, parallel: bool = True) -> AutoencoderTinyOutput | tuple:
        """(B, 3, F, H, W) in [-1, 1] -> (B, C, 1 + (F - 1) // 4, H / 8p, W / 8p) latents."""
        latents = self.encode_frames01(x.transpose(1, 2).add(1).div(2), parallel).transpose(1, 2)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: Tensor, generator=None, return_dict: bool = True, parallel: bool = True,
               chunk_size: int | None = None) -> DecoderOutput | tuple:
        """(B, C, T, h, w) latents -> (B, 3, 4T - 3, 8ph, 8pw) in [-1, 1] (not clamped).

        In parallel, `chunk_size` (default: the student's `decode_chunk_size`, from its config or
        `enable_chunking`) bounds the frames a layer takes at once, so memory stops growing with the
        clip; the frames are the unchunked ones. `parallel=False` streams frame by frame."""
        chunk_size = self.decode_chunk_size if chunk_size is None else chunk_size
        if parallel and chunk_size is not None:
            sample = torch.cat([c.mul(2).sub(1) for c in self.stream_chunks01(z.transpose(1, 2), chunk_size)], 1)
        else:
            sample = self.decode_frames01(z.transpose(1, 2), parallel).mul(2).sub(1)
        sample = sample.transpose(1, 2)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def decode_frames(self, z: Tensor) -> Iterator[Tensor]:
        """Streaming decode of (B, C, T, h, w): yields (B, 3, H, W) frames in [-1, 1] as soon as each is ready."""
        for frame in self.stream_frames01(z.transpose(1, 2)):
            yield frame.mul(2).sub(1)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        return self.decode(self.encode(sample).latents, return_dict=return_dict)


# -- reading TAEHV files -------------------------------------------------------------------------------------------

ENCODER_POOLS, DECODER_GROWS = (2, 7, 12), (7, 13, 19)  # indices of TPool / TGrow in the two Sequentials


def arch_from_state(state: dict[str, Tensor], name: str | None = None) -> VideoArch:
    """The layout a TAEHV state dict was saved from, read off its shapes (and, for CogVideoX's frame rule and
    lighttaehy1_5's LeakyReLU, which shapes cannot tell, off the model name)."""
    if "decoder.22.bias" not in state or "encoder.0.weight" not in state:
        raise ExportError("These weights are not in TAEHV layout (no encoder.0.weight / decoder.22.bias); pass a "
                          "taehv.py-style .pth/.safetensors file or a VideoStudent folder.")
    if any(k.startswith("decoder.") and ".conv.1." in k for k in state):
        raise ExportError("This is a TAEHV '_super' decoder (ConvNeXt-style blocks), which tinyae does not build.")
    patch = math.isqrt(state["encoder.0.weight"].shape[1] // 3)
    width = state["encoder.0.weight"].shape[0]
    widths = tuple(state[f"decoder.{i}.conv.0.weight"].shape[0] for i in (3, 9, 15)) + (
        state["decoder.20.weight"].shape[0],)
    pools = tuple(state[f"encoder.{i}.conv.weight"].shape[1] == 2 * width for i in ENCODER_POOLS)
    grows = tuple(state[f"decoder.{i}.conv.weight"].shape[0] == 2 * w for i, w in zip(DECODER_GROWS, widths))
    return VideoArch(state["decoder.1.weight"].shape[1], patch, pools, grows, (True, True, True), width, widths,
                     "leaky_relu" if name and name.startswith("lighttaehy") else "relu",
                     bool(name and name.startswith("taecvx")))


def _student_folder(source: Path) -> Path:
    """A training checkpoint's student_ema/ or a training output's student/, else the folder itself."""
    for sub in ("student_ema", "student"):
        if (source / sub / "config.json").is_file():
            return source / sub
    return source


def is_video_student(source: str | Path) -> bool:
    """Whether `source` holds a video student (a VideoStudent folder, a training output of one, or a TAEHV file),
    so commands that take any student know which kind to load."""
    source = Path(source)
    if source.is_dir():
        config = _student_folder(source) / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("_class_name") == VideoStudent.__name__
    if source.is_file() and source.suffix in (".pth", ".safetensors"):
        return "decoder.22.bias" in read_weights(source)  # a damaged file is refused as such, not as another kind
    return False


WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def _from_folder(folder: Path) -> VideoStudent:
    """diffusers' from_pretrained, after every weight file in the folder has been read once safely, so a
    truncated or damaged one is named in one sentence instead of an OSError from deep inside diffusers."""
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            read_weights(folder / name)
    try:
        return VideoStudent.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ExportError(f"'{folder}' is not a readable VideoStudent folder ({first}); export or save it "
                          "again.") from None


def load_video_student(source: str | Path) -> VideoStudent:
    """A VideoStudent from a diffusers-style folder (config.json; also a training output's student/) or a
    taehv.py / ComfyUI weight file."""
    source = Path(source)
    if source.is_dir():
        source = _student_folder(source)
        if not (source / "config.json").is_file():
            raise ExportError(f"'{source}' has no config.json: pass a VideoStudent folder or a TAEHV weight file.")
        return _from_folder(source)
    if not source.is_file():
        raise ExportError(f"'{source}' does not exist: pass a VideoStudent folder or a TAEHV .pth/.safetensors file.")
    state = read_weights(source)
    name = source.stem
    student = VideoStudent.from_arch(arch_from_state(state, name), name if name in VIDEO_MODELS else None)
    student.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return student
