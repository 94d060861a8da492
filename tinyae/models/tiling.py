"""Tiled encode and decode with overlap blending, for any latent channel count and downscale factor.

Large images do not fit a decoder's activations at once (TAESD's full-resolution stage
holds 64 channels per output pixel: 4 GB at 4096 x 4096 in fp32). Tiling runs the network
on overlapping tiles and blends them, so memory is one tile's activations plus the output.

Tiles are laid out on the latent grid (`tile` and `overlap` in latent pixels; the encoder's
image tiles are `downscale` times larger), evenly spaced so that neighbours overlap by at
least `overlap`. Where tiles overlap, each tile's weight ramps linearly from ~0 at its own
edge (where zero padding made it wrong) to 1, and the weights along each axis are
normalised to sum to one; the 2-D weight is the product of the two axes' weights, so the
blend is a partition of unity without a full-size weight buffer. Nothing depends on the
number of channels, so the same code tiles 4-, 16- and 32-channel students, 8x and 32x.

Only convolutions are tiled. FLUX.2's pool branch normalises over the whole map, which no
tile sees, so its stages (at latent resolution, where the whole map is small) run untiled:
the decoder runs its `global_stages` on all latents and tiles its `local_stages`; the
encoder tiles its `local_stages` and runs its `global_stages` on the whole latent-size map.

`TilingMixin` gives a model diffusers' switches (`enable_tiling()`, `disable_tiling()`,
`use_tiling`); `Student` and `TinyAutoencoder` use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyae.errors import ConfigError


@dataclass(frozen=True)
class Tiling:
    """Tile size and minimum overlap of neighbouring tiles, in latent pixels."""

    tile: int = 64
    overlap: int = 16

    def __post_init__(self) -> None:
        if self.tile < 1 or self.overlap < 0 or 2 * self.overlap > self.tile:
            raise ConfigError(f"Tiling needs a positive tile and an overlap of at most half of it, got tile "
                              f"{self.tile} and overlap {self.overlap} (latent pixels).")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest evenly spaced tiles covering [0, length) with neighbours overlapping >= `overlap`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    stride = (length - tile) / (n - 1)
    return [round(i * stride) for i in range(n)]


def blend_weights(starts: list[int], tile: int, length: int, scale: int) -> list[torch.Tensor]:
    """Per tile, 1-D weights over its `tile * scale` output pixels that sum to one across tiles at every pixel."""
    size = min(tile, length) * scale
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:  # ramp up over the overlap with the previous tile
            n = (starts[i - 1] + tile - start) * scale
            w[:n] = torch.minimum(w[:n], (torch.arange(n, dtype=torch.float64) + 0.5) / n)
        if i < len(starts) - 1:  # ramp down over the overlap with the next tile
            n = (start + tile - starts[i + 1]) * scale
            w[size - n:] = torch.minimum(w[size - n:], (torch.arange(n, 0, -1, dtype=torch.float64) - 0.5) / n)
        weights.append(w)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for start, w in zip(starts, weights):
        total[start * scale:start * scale + size] += w
    return [(w / total[start * scale:start * scale + size]).float() for start, w in zip(starts, weights)]


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: tuple[int, int], tiling: Tiling,
          in_scale: int, out_scale: int) -> torch.Tensor:
    """`fn(x)` computed tile by tile on a latent `grid` of (rows, cols) and blended.

    A grid pixel is `in_scale` input pixels and `out_scale` output pixels (decode: 1 and the
    upscale factor; encode: the downscale factor and 1).
    """
    rows, cols = grid
    ys, xs = tile_starts(rows, tiling.tile, tiling.overlap), tile_starts(cols, tiling.tile, tiling.overlap)
    wy = blend_weights(ys, tiling.tile, rows, out_scale)
    wx = blend_weights(xs, tiling.tile, cols, out_scale)
    th, tw = min(tiling.tile, rows), min(tiling.tile, cols)
    out = None
    for y, w_row in zip(ys, wy):
        for x0, w_col in zip(xs, wx):
            piece = fn(x[..., y * in_scale:(y + th) * in_scale, x0 * in_scale:(x0 + tw) * in_scale])
            if out is None:
                out = piece.new_zeros(*piece.shape[:-2], rows * out_scale, cols * out_scale)
            weight = (w_row[:, None] * w_col[None, :]).to(piece.device, piece.dtype)
            out[..., y * out_scale:(y + th) * out_scale, x0 * out_scale:(x0 + tw) * out_scale] += piece * weight
    return out


def tiled_decode(decoder: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, upscale: int,
                 tiling: Tiling = Tiling()) -> torch.Tensor:
    """(N, C, h, w) latents (or latent-size features) -> (N, 3, h * upscale, w * upscale) images, tile by tile."""
    return tiled(decoder, latents, tuple(latents.shape[-2:]), tiling, 1, upscale)


def tiled_encode(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, downscale: int,
                 tiling: Tiling = Tiling()) -> torch.Tensor:
    """(N, 3, H, W) images (H, W multiples of `downscale`) -> (N, C, H / f, W / f) latents or features, by tile."""
    height, width = images.shape[-2:]
    if height % downscale or width % downscale:
        raise ConfigError(f"Tiled encoding needs an image size divisible by {downscale}, got {height}x{width}.")
    return tiled(encoder, images, (height // downscale, width // downscale), tiling, downscale, 1)


class TilingMixin:
    """diffusers-style tiling switches for a model with a TinyEncoder `encoder`, a TinyDecoder `decoder`
    and `downscale`."""

    use_tiling: bool = False
    tiling: Tiling = Tiling()

    def enable_tiling(self, tile: int = Tiling.tile, overlap: int = Tiling.overlap) -> None:
        """Encode and decode inputs larger than one tile (`tile` latent pixels a side) tile by tile."""
        self.tiling, self.use_tiling = Tiling(tile, overlap), True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _needs_tiles(self, grid: tuple[int, int]) -> bool:
        return self.use_tiling and max(grid) > self.tiling.tile

    def run_encoder(self, images: torch.Tensor) -> torch.Tensor:
        f = self.downscale
        if self._needs_tiles((images.shape[-2] // f, images.shape[-1] // f)):
            return self.encoder.global_stages(tiled_encode(self.encoder.local_stages, images, f, self.tiling))
        return self.encoder(images)

    def run_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        if self._needs_tiles(tuple(latents.shape[-2:])):
            return tiled_decode(self.decoder.local_stages, self.decoder.global_stages(latents), self.downscale,
                                self.tiling)
        return self.decoder(latents)
