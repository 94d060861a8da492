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

Newer layouts (`VIDEO_MODELS`): the `_super` decoders (`SuperMemBlock`s, sub-pixel upsampling, about
2x the decoder), taeltx2_3_wide's grouped `WideMemBlock`s, MiniMax H3's chunked time (`h3_chunks`)
and ComfyUI's lighttaehy1_5 (LeakyReLU, frames out in [-1, 1]); `for_previews` is taehv.py's
load-time switch that skips upscaling stages.

Frame rule: 1 + 4k frames encode to 1 + k latents (input padded at the end with its last
frame to a multiple of the time factor), and T latents decode to 4T - 3 frames (the decoder's
first 3 frames are dropped). Parallel decoding runs all frames through each layer at once;
streaming decoding (`decode_frames`) pushes one latent at a time through the layers and yields
frames as they are ready, holding one frame per layer: the same frames, in bounded memory; streaming
encoding (`encode_frames`) does the same from frames to latents.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
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


class SuperMemBlock(nn.Module):
    """The `_super` decoders' block (ConvNeXt-style): a depthwise 7x7 over [frame, previous frame's input], a 1x1
    to 4x the width, ReLU, a 1x1 back, plus the input; `conv.0/1/3`. Cheaper per channel than a MemBlock, so the
    decoder can be twice as wide."""

    def __init__(self, width: int, expansion: int = 4, kernel: int = 7):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, kernel, padding=kernel // 2, groups=2 * width, bias=False),
            nn.Conv2d(2 * width, expansion * width, 1), nn.ReLU(), nn.Conv2d(expansion * width, width, 1, bias=False))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return self.conv(torch.cat([x, past], 1)) + x


class WideMemBlock(nn.Module):
    """`taeltx2_3_wide`'s block: 1x1, grouped 3x3 (groups of `group_width` channels), 1x1, grouped 3x3, each but
    the last followed by ReLU; `conv.0/2/4/6`, a 1x1 `skip` when widths differ, ReLU after the sum. Grouping keeps
    a 1024-wide decoder affordable."""

    def __init__(self, n_in: int, n_out: int, group_width: int = 64):
        super().__init__()
        groups = max(1, n_out // group_width)
        if n_out % groups:
            raise ExportError(f"A WideMemBlock of width {n_out} cannot be split into groups of {group_width}.")
        self.conv = nn.Sequential(nn.Conv2d(2 * n_in, n_out, 1), nn.ReLU(), conv(n_out, n_out, groups=groups),
                                  nn.ReLU(), nn.Conv2d(n_out, n_out, 1), nn.ReLU(), conv(n_out, n_out, groups=groups))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


MEMORY_BLOCKS = (MemBlock, SuperMemBlock, WideMemBlock)  # the blocks that see the previous frame

DECODER_VARIANTS = ("base", "super", "wide")
H3_ENCODE_CHUNK, H3_DECODE_CHUNK, H3_DROPPED = 17, 5, 3  # MiniMax H3: frames / latents per chunk, latents cut


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
    # "super": the `_super` decoders (SuperMemBlocks, PixelShuffle); "wide": taeltx2_3_wide's WideMemBlocks
    decoder_variant: str = "base"
    # MiniMax H3 (taeh3): encoded in independent 17-frame chunks (3 zero frames in front, the last 3 latents cut)
    # and decoded with 5-latent chunks' first frames and the last 3 latents' frames trimmed, as H3's own VAE does
    h3_chunks: bool = False
    # lighttaehy1_5 (LightX2V's, as ComfyUI reads it): the output conv writes frames in [-1, 1], not [0, 1]
    signed_output: bool = False

    def __post_init__(self):
        for name in ("encoder_time_downscale", "decoder_time_upscale", "decoder_space_upscale", "decoder_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.decoder_widths) != 4 or any(len(getattr(self, n)) != 3 for n in
                                                 ("encoder_time_downscale", "decoder_time_upscale",
                                                  "decoder_space_upscale")):
            raise ExportError("A TAEHV layout has 3 encoder and 3 decoder stages and 4 decoder widths.")
        if self.act_fn not in ("relu", "leaky_relu"):
            raise ExportError(f"Unknown act_fn '{self.act_fn}' for a video student; use relu or leaky_relu.")
        if self.decoder_variant not in DECODER_VARIANTS:
            raise ExportError(f"Unknown decoder_variant '{self.decoder_variant}' for a video student; use one of "
                              f"{', '.join(DECODER_VARIANTS)}.")

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
        """Latents for `frames` input frames: 1 + 4k -> 1 + k (input padded to a multiple of the time factor);
        H3: 17k -> 5k - 3."""
        if self.h3_chunks:
            return -(-frames // H3_ENCODE_CHUNK) * (H3_ENCODE_CHUNK + H3_DROPPED) // self.time_downscale - H3_DROPPED
        return -(-frames // self.time_downscale)

    def decoded_frames(self, latents: int) -> int:
        """Frames decoded from `latents` latents: 4T - 3 (the decoder's warm-up frames are dropped); H3: 5k - 3
        latents -> 17k - 12 frames."""
        if self.h3_chunks:
            return len(h3_kept_frames(latents, self.time_upscale))
        if self.keep_frames_for_even_latents and latents % 2 == 0:
            return latents * self.time_upscale
        return max(0, latents * self.time_upscale - (self.time_upscale - 1))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def h3_kept_frames(latents: int, time_upscale: int) -> list[int]:
    """The decoder frames MiniMax H3 keeps, by index: its frames are padded (with zeros) to whole 5-latent chunks,
    each chunk loses its first `time_upscale - 1` frames and the video its last 3 latents' worth. Indices past the
    decoder's frames stand for those zero frames, which upstream returns when `latents` is not 5k - 3."""
    chunk = H3_DECODE_CHUNK * time_upscale
    padded = -(-latents * time_upscale // chunk) * chunk
    kept = [i for i in range(padded) if i % chunk >= time_upscale - 1]
    return kept[:max(0, len(kept) - H3_DROPPED * time_upscale)]


@dataclass(frozen=True)
class VideoModel:
    """A published TAEHV-format model: its layout, the teacher it stands for, and where its files are looked for."""

    arch: VideoArch
    teacher: str  # the tinyae teacher preset of its latent space
    comfyui_name: str | None = None  # the file name ComfyUI's VAELoader / previews look for (models/vae_approx)
    comfyui_fp16: bool | None = None  # the dtype ComfyUI's loader needs to read it in this space (None: either)
    note: str = ""
    variant_of: str | None = None  # another decoder for `variant_of`'s latent space: never picked by default
    # which published model ComfyUI reads this file as, when that is another layout (it goes by shapes only)
    comfyui_misreads_as: str | None = None


# File names are madebyollin/taehv's (taehv.py picks the layout from them: `_super` / `taeh3` / `taeltx` in the
# name; taeltx2_3_wide's decoder is on the taehv repo's 2026_03_11_taeltx23_wide branch). ComfyUI (comfy/sd.py,
# nodes.py, latent_preview.py) recognises a TAEHV file by `decoder.22.bias` and reads the latent channels off
# `decoder.1.weight`: 48 or 128 channels are Wan 2.2's or LTX-2's (patch 2 or 4, no scaling), 24 with a 12-entry
# output bias MiniMax H3's (chunked, no scaling), 32 with a 12-entry output bias HunyuanVideo 1.5's *with
# LeakyReLU* (lighttaehy1_5: a ReLU taehv1_5 file decodes other frames there); a 16-channel file in fp16 is taken
# as HunyuanVideo's and gets HunyuanVideo's scale, in fp32 as Wan 2.1's with no scaling. VAELoader loads a
# models/vae_approx file only under its exact names (taehv, lighttaew2_1, lighttaew2_2, lighttaehy1_5, taeltx_2,
# taeh3). It has no CogVideoX, Open-Sora, `_super` or wide path (a `_super` file has no `decoder.1.weight`).
_HV15, _LTX = VideoArch(32, 2), VideoArch(128, 4, (True, True, True), (True, True, True))
VIDEO_MODELS: dict[str, VideoModel] = {
    "taehv": VideoModel(VideoArch(16, 1), "hunyuan-video", "taehv", True, "HunyuanVideo"),
    "taew2_1": VideoModel(VideoArch(16, 1), "wan2.1", "lighttaew2_1", False, "Wan 2.1 (and Qwen-Image's VAE)"),
    "taew2_2": VideoModel(VideoArch(48, 2), "wan2.2", "lighttaew2_2", None, "Wan 2.2 TI2V-5B"),
    "taehv1_5": VideoModel(_HV15, "hunyuan-video-1.5", None, None, "HunyuanVideo 1.5",
                           comfyui_misreads_as="lighttaehy1_5"),
    "lighttaehy1_5": VideoModel(dataclasses.replace(_HV15, act_fn="leaky_relu", signed_output=True),
                                "hunyuan-video-1.5", "lighttaehy1_5", None,
                                "HunyuanVideo 1.5, ComfyUI's LeakyReLU(0.2) layout, frames in [-1, 1]",
                                variant_of="taehv1_5"),
    "taecvx": VideoModel(VideoArch(16, 1, keep_frames_for_even_latents=True), "cogvideox", None, None, "CogVideoX"),
    "taeos1_3": VideoModel(VideoArch(16, 1), "open-sora-1.3", None, None, "Open-Sora 1.3"),
    "taeltx_2": VideoModel(_LTX, "ltx-video", "taeltx_2", None, "LTX-Video / LTX-2 (8x time)"),
    # ComfyUI loads LTX files from vae_approx only as `taeltx_2`; the layout is the same, so the 2.3 copy takes it
    "taeltx2_3": VideoModel(_LTX, "ltx-2.3", "taeltx_2", None, "LTX-2.3 (8x time)"),
    "taeltx2_3_wide": VideoModel(dataclasses.replace(_LTX, decoder_widths=(1024, 512, 256, 64),
                                                     decoder_variant="wide"), "ltx-2.3", None, None,
                                 "LTX-2.3, wide grouped-conv decoder", variant_of="taeltx2_3"),
    "taeh3": VideoModel(VideoArch(24, 2, h3_chunks=True), "minimax-h3", "taeh3", None,
                        "MiniMax H3 (17-frame chunks)"),
    "taew2_2_super": VideoModel(VideoArch(48, 2, decoder_widths=(512, 256, 128, 64), decoder_variant="super"),
                                "wan2.2", None, None, "Wan 2.2 TI2V-5B, ~2x decoder for final output",
                                variant_of="taew2_2"),
    "taehv1_5_super": VideoModel(dataclasses.replace(_HV15, decoder_widths=(512, 256, 128, 64),
                                                     decoder_variant="super"), "hunyuan-video-1.5", None, None,
                                 "HunyuanVideo 1.5, ~2x decoder for final output", variant_of="taehv1_5"),
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
    """0 clamp, 1 conv(C, w0), 2 act, per stage [3 MemBlocks, upsample, TGrow, conv (no bias)] (3-20), 21 act, 22 conv
    (the `_super` layout: `build_super_decoder`; the wide one has WideMemBlocks in the MemBlocks' places)."""
    if arch.decoder_variant == "super":
        return build_super_decoder(arch.latent_channels, arch.decoder_widths, 3 * arch.patch_size ** 2,
                                   arch.decoder_time_upscale, arch.decoder_space_upscale)
    widths = arch.decoder_widths
    layers: list[nn.Module] = [SoftClamp(), conv(arch.latent_channels, widths[0]), activation(arch.act_fn)]
    for stage, (grow, up) in enumerate(zip(arch.decoder_time_upscale, arch.decoder_space_upscale)):
        w = widths[stage]
        if arch.decoder_variant == "wide":
            layers += [WideMemBlock(w, w) for _ in range(3)]
        else:
            layers += [MemBlock(w, w, arch.act_fn) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2 if up else 1), TGrow(w, 2 if grow else 1),
                   conv(w, widths[stage + 1], bias=False)]
    layers += [activation(arch.act_fn), conv(widths[3], 3 * arch.patch_size ** 2)]
    return nn.Sequential(*layers)


def build_super_decoder(latent_channels: int, widths: tuple[int, ...], out_channels: int,
                        time_upscale: tuple[bool, ...], space_upscale: tuple[bool, ...]) -> nn.Sequential:
    """The `_super` decoder: 0 a 1x1 (no bias, no clamp) to widths[0]; per stage s (1 + 7s ...): 3 SuperMemBlocks,
    a 3x3 to widths[s + 1] x 4 (x 1 without space upscaling), ReLU, PixelShuffle(2), TGrow; 22 a 3x3 to
    `out_channels`. Upsampling by sub-pixel convs instead of nearest + conv keeps the 4x-wide stages cheap."""
    layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 1, bias=False)]
    for stage, (grow, up) in enumerate(zip(time_upscale, space_upscale)):
        w, w_next, factor = widths[stage], widths[stage + 1], 2 if up else 1
        layers += [SuperMemBlock(w) for _ in range(3)]
        layers += [conv(w, w_next * factor ** 2), nn.ReLU(), nn.PixelShuffle(factor), TGrow(w_next, 2 if grow else 1)]
    layers.append(conv(widths[-1], out_channels))
    return nn.Sequential(*layers)


def run_parallel(layers: nn.Sequential, x: Tensor) -> Tensor:
    """NTCHW through the layers, all frames of a layer at once; each MemBlock sees its input shifted by a frame."""
    n = x.shape[0]
    h = x.flatten(0, 1)
    for layer in layers:
        if isinstance(layer, MEMORY_BLOCKS):
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
            if isinstance(layer, MEMORY_BLOCKS):
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
                 decoder_variant: str = "base", h3_chunks: bool = False, signed_output: bool = False,
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
                              keep_frames_for_even_latents, decoder_variant=decoder_variant, h3_chunks=h3_chunks,
                              signed_output=signed_output)
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
        """NTCHW frames in [0, 1] -> NTCHW latents; `parallel=False` streams them frame by frame
        (`stream_encode01`), the same latents in bounded memory."""
        if not parallel:
            return torch.stack(list(self.stream_encode01(x.unbind(1))), 1)
        if self.arch.patch_size > 1:
            x = F.pixel_unshuffle(x, self.arch.patch_size)
        if self.arch.h3_chunks:  # independent chunks, each behind 3 zero frames, encoded side by side
            n = x.shape[0]
            x = torch.cat([x, x[:, -1:].expand(-1, -x.shape[1] % H3_ENCODE_CHUNK, -1, -1, -1)], 1)
            x = F.pad(x.unflatten(1, (-1, H3_ENCODE_CHUNK)), (0, 0, 0, 0, 0, 0, H3_DROPPED, 0))
            return run_parallel(self.encoder, x.flatten(0, 1)).unflatten(0, (n, -1)).flatten(1, 2)[:, :-H3_DROPPED]
        short = -x.shape[1] % self.arch.time_downscale
        if short:
            x = torch.cat([x, x[:, -1:].expand(-1, short, -1, -1, -1)], 1)
        return run_parallel(self.encoder, x)

    def stream_encode01(self, frames: Iterable[Tensor]) -> Iterator[Tensor]:
        """Frames (N, 3, H, W) in [0, 1] as they arrive -> latents (N, C, h, w) as soon as each is ready (the end
        padded with the last frame, as `encode_frames01`), holding one frame per layer."""
        arch, state, last, count = self.arch, None, None, 0
        held: list[Tensor] = []  # H3 cuts the last 3 latents of the video: they wait until the next ones come

        def push(frame: Tensor) -> Iterator[Tensor]:
            nonlocal state
            if arch.h3_chunks and count % H3_ENCODE_CHUNK == 0:  # a chunk starts afresh behind 3 zero frames
                state = StreamState(self.encoder)
                frame = torch.cat([torch.zeros_like(frame).expand(-1, H3_DROPPED, -1, -1, -1), frame], 1)
            for out in state.push(frame):
                for latent in out.unbind(1):
                    if arch.h3_chunks:
                        held.append(latent)
                        if len(held) > H3_DROPPED:
                            yield held.pop(0)
                    else:
                        yield latent

        state = StreamState(self.encoder)
        for frame in frames:
            last = F.pixel_unshuffle(frame, arch.patch_size) if arch.patch_size > 1 else frame
            yield from push(last[:, None])
            count += 1
        if last is not None:
            for _ in range(-count % (H3_ENCODE_CHUNK if arch.h3_chunks else arch.time_downscale)):
                yield from push(last[:, None])
                count += 1

    def _finish(self, frames: Tensor) -> Tensor:
        frames = F.pixel_shuffle(frames, self.arch.patch_size) if self.arch.patch_size > 1 else frames
        return frames.add(1).div(2) if self.arch.signed_output else frames

    def _kept_frames(self, latents: int) -> list[int]:
        """Which of the decoder's frames (by index) the decode returns: all but the first warm-up ones, or H3's."""
        if self.arch.h3_chunks:
            return h3_kept_frames(latents, self.arch.time_upscale)
        total = self.arch.time_upscale * latents
        return list(range(total - self.arch.decoded_frames(latents), total))

    def decode_frames01(self, z: Tensor, parallel: bool = True, chunk_size: int | None = None) -> Tensor:
        """NTCHW latents -> NTCHW frames, ~[0, 1] (not clamped), 4T - 3 of them. `chunk_size`: see `decode`."""
        if not parallel:
            return torch.stack(list(self.stream_frames01(z)), 1)
        if chunk_size is not None:
            return torch.cat(list(self.stream_chunks01(z, chunk_size)), 1)
        raw, kept = run_parallel(self.decoder, z), self._kept_frames(z.shape[1])
        if not self.arch.h3_chunks:
            return self._finish(raw[:, kept[0]:] if kept else raw[:, :0])
        if kept and kept[-1] >= raw.shape[1]:  # as upstream: H3's chunk padding decodes to zeros
            raw = F.pad(raw, (0, 0, 0, 0, 0, 0, 0, kept[-1] + 1 - raw.shape[1]))
        return self._finish(raw[:, kept])

    def stream_chunks01(self, z: Tensor, chunk_size: int) -> Iterator[Tensor]:
        """Yields (N, t, 3, H, W) frames in [0, 1] in order, no layer ever holding more than `chunk_size` frames."""
        state, kept = StreamState(self.decoder, chunk_size), self._kept_frames(z.shape[1])
        keep, seen, frames = set(kept), 0, None
        for latents in z.split(chunk_size, 1):
            for frames in state.push(latents):
                wanted = [i - seen for i in range(seen, seen + frames.shape[1]) if i in keep]
                seen += frames.shape[1]
                if wanted:
                    yield self._finish(frames if len(wanted) == frames.shape[1] else frames[:, wanted])
        padding = sum(1 for i in kept if i >= seen)  # H3's zero frames past the decoder's last
        if padding and frames is not None:
            yield self._finish(frames.new_zeros(frames.shape[0], padding, *frames.shape[2:]))

    def stream_frames01(self, z: Tensor) -> Iterator[Tensor]:
        """Yields (N, 3, H, W) frames in [0, 1] one at a time, holding one frame per layer."""
        for chunk in self.stream_chunks01(z, 1):
            yield from chunk.unbind(1)

    def for_previews(self, decoder_time_upscale: tuple[bool, ...] | None = None,
                     decoder_space_upscale: tuple[bool, ...] | None = None) -> "VideoStudent":
        """A copy whose decoder skips temporal and/or spatial upscaling, as taehv.py's `TAEHV(...,
        decoder_time_upscale=(False, False), decoder_space_upscale=...)`: cheaper previews from the same weights
        (a skipped TGrow keeps its last timestep's output channels), T latents -> T frames without time upscaling.
        Two time flags, as upstream, stand for the last two stages; a switch not passed stays as trained."""
        arch = self.arch
        time = arch.decoder_time_upscale if decoder_time_upscale is None else tuple(decoder_time_upscale)
        time = (False, *time) if len(time) == 2 else time
        space = arch.decoder_space_upscale if decoder_space_upscale is None else tuple(decoder_space_upscale)
        if len(time) != 3 or len(space) != 3:
            raise ExportError("Pass 2 or 3 decoder_time_upscale flags and 3 decoder_space_upscale flags.")
        if any(new and not old for new, old in zip(time + space, arch.decoder_time_upscale
                                                    + arch.decoder_space_upscale)):
            raise ExportError(f"The decoder upscales in time {arch.decoder_time_upscale} and space "
                              f"{arch.decoder_space_upscale}; a preview can only switch stages off, not on.")
        if arch.decoder_variant == "super" and space != arch.decoder_space_upscale:
            raise ExportError("A `_super` decoder upscales space with sub-pixel convs whose weights fix the factor; "
                              "switch off only time upscaling for it.")
        cheap = VideoStudent.from_arch(dataclasses.replace(arch, decoder_time_upscale=time,
                                                           decoder_space_upscale=space), self.taehv_name)
        state = self.state_dict()
        for key, value in cheap.state_dict().items():
            if state[key].shape != value.shape:  # a TGrow that no longer grows: the last timestep's channels
                state[key] = state[key][-value.shape[0]:]
        cheap.load_state_dict(state, strict=True)
        weight = next(self.parameters())
        cheap.to(weight.device)
        return (cheap if weight.dtype == torch.float32 else cheap.to(weight.dtype)).eval()

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

    def encode_frames(self, frames: Iterable[Tensor]) -> Iterator[Tensor]:
        """Streaming encode: (B, 3, H, W) frames in [-1, 1] as they arrive -> (B, C, h, w) latents as soon as each
        is ready, the same as `encode`'s; the end is padded with the last frame when the frames run out."""
        for latent in self.stream_encode01(frame.add(1).div(2) for frame in frames):
            yield latent

    def decode_frames(self, z: Tensor) -> Iterator[Tensor]:
        """Streaming decode of (B, C, T, h, w): yields (B, 3, H, W) frames in [-1, 1] as soon as each is ready."""
        for frame in self.stream_frames01(z.transpose(1, 2)):
            yield frame.mul(2).sub(1)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        return self.decode(self.encode(sample).latents, return_dict=return_dict)


# -- reading TAEHV files -------------------------------------------------------------------------------------------

ENCODER_POOLS, DECODER_GROWS = (2, 7, 12), (7, 13, 19)  # indices of TPool / TGrow in the two Sequentials
SUPER_GROWS = (7, 14, 21)  # TGrow in a `_super` decoder


def arch_from_state(state: dict[str, Tensor], name: str | None = None) -> VideoArch:
    """The layout a TAEHV state dict was saved from, read off its shapes (and, for CogVideoX's frame rule and
    lighttaehy1_5's LeakyReLU and [-1, 1] output, which shapes cannot tell, off the model name; H3's chunks off
    its 24 channels and 12-entry output, as ComfyUI does)."""
    if "decoder.22.bias" not in state or "encoder.0.weight" not in state:
        raise ExportError("These weights are not in TAEHV layout (no encoder.0.weight / decoder.22.bias); pass a "
                          "taehv.py-style .pth/.safetensors file or a VideoStudent folder.")
    patch = math.isqrt(state["encoder.0.weight"].shape[1] // 3)
    width = state["encoder.0.weight"].shape[0]
    pools = tuple(state[f"encoder.{i}.conv.weight"].shape[1] == 2 * width for i in ENCODER_POOLS)
    if "decoder.0.weight" in state:  # `_super`: a 1x1 in front instead of the clamp
        channels = state["decoder.0.weight"].shape[1]
        widths = (state["decoder.0.weight"].shape[0],) + tuple(state[f"decoder.{i}.conv.weight"].shape[1]
                                                                for i in SUPER_GROWS)
        grows = tuple(state[f"decoder.{i}.conv.weight"].shape[0] == 2 * state[f"decoder.{i}.conv.weight"].shape[1]
                      for i in SUPER_GROWS)
        ups = tuple(state[f"decoder.{i - 3}.weight"].shape[0] == 4 * w for i, w in zip(SUPER_GROWS, widths[1:]))
        variant = "super"
    else:
        channels = state["decoder.1.weight"].shape[1]
        widths = tuple(state[f"decoder.{i}.conv.0.weight"].shape[0] for i in (3, 9, 15)) + (
            state["decoder.20.weight"].shape[0],)
        grows = tuple(state[f"decoder.{i}.conv.weight"].shape[0] == 2 * w for i, w in zip(DECODER_GROWS, widths))
        ups, variant = (True, True, True), "wide" if "decoder.3.conv.6.weight" in state else "base"
    return VideoArch(channels, patch, pools, grows, ups, width, widths,
                     "leaky_relu" if name and name.startswith("lighttaehy") else "relu",
                     bool(name and name.startswith("taecvx")), decoder_variant=variant,
                     h3_chunks=channels == 24 and patch == 2,
                     signed_output=bool(name and name.startswith("lighttaehy")))


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
