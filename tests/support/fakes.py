"""Test-only models: a tiny random CLIP and a deterministic colour model (colour words <-> solid-colour images).

Never imported by the product. Both plug into the real ClipEncoder, so preprocessing, batching, caching and
normalisation run as they do with a real model.
"""

from __future__ import annotations

from pathlib import Path

import clip
import torch
from clip.clip import _transform
from PIL import Image

from clip_app.bench.perf.setup import random_clip
from clip_app.encoders import ClipEncoder

TINY_RESOLUTION = 32
TINY_DIM = 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 180, 20),
    "blue": (20, 20, 220),
    "yellow": (240, 230, 20),
    "cyan": (20, 220, 230),
    "magenta": (220, 20, 220),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
    "orange": (250, 140, 0),
    "purple": (110, 20, 160),
    "grey": (128, 128, 128),
    "brown": (120, 70, 20),
}
COLOUR_NAMES = tuple(COLOURS)


def make_tiny_clip(seed: int = 0) -> clip.model.CLIP:
    """A real CLIP architecture with widths of 64 (one head each), 32 px input and 32-d features."""
    # (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length, vocab_size,
    #  transformer_width, transformer_heads, transformer_layers)
    return random_clip((TINY_DIM, TINY_RESOLUTION, 1, 64, 16, 77, 49408, 64, 1, 1), seed)


def make_tiny_resnet_clip(seed: int = 0) -> clip.model.CLIP:
    """CLIP's ResNet variant (ModifiedResNet + attention pooling), tiny: one block per stage, 32 px, 32-d."""
    torch.manual_seed(seed)
    return clip.model.CLIP(embed_dim=TINY_DIM, image_resolution=TINY_RESOLUTION, vision_layers=(1, 1, 1, 1),
                           vision_width=8, vision_patch_size=None, context_length=77, vocab_size=49408,
                           transformer_width=64, transformer_heads=1, transformer_layers=1)


def save_tiny_checkpoint(path: Path, seed: int = 0, resnet: bool = False) -> Path:
    """Save a tiny CLIP's state dict where clip.load(path, jit=False) can read it."""
    torch.save((make_tiny_resnet_clip(seed) if resnet else make_tiny_clip(seed)).state_dict(), path)
    return path


def solid_image(colour: str | tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A solid-colour RGB image of a named colour (or an RGB triple)."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return Image.new("RGB", size, rgb)


class _Visual(torch.nn.Module):
    input_resolution = TINY_RESOLUTION


class ColorClip(torch.nn.Module):
    """Deterministic stand-in for CLIP: images map to their mean colour's similarity to each known colour; a text
    maps to the colour word(s) it contains. So 'a photo of a red thing' ranks a red image first."""

    MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual()
        self.register_buffer("prototypes", torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0)
        token_ids = [int(clip.tokenize(name)[0, 1]) for name in COLOUR_NAMES]
        self.register_buffer("colour_tokens", torch.tensor(token_ids))
        self.dtype = torch.float32

    @property
    def dim(self) -> int:
        return len(COLOURS) + 1

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = (pixels.float() * self.STD + self.MEAN).mean(dim=(2, 3))  # [N, 3] in 0..1
        dist2 = ((rgb[:, None, :] - self.prototypes[None]) ** 2).sum(-1)  # [N, C]
        sims = torch.exp(-dist2 / 0.02)
        return torch.cat([sims, torch.full((len(rgb), 1), 1e-3)], dim=1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        hits = (tokens[:, :, None] == self.colour_tokens[None, None, :]).any(dim=1).float()  # [N, C]
        unknown = (hits.sum(dim=1, keepdim=True) == 0).float()
        return torch.cat([hits, unknown], dim=1)


def color_encoder(batch_size: int = 4) -> ClipEncoder:
    """The real ClipEncoder around the deterministic colour model."""
    return ClipEncoder.from_model(ColorClip(), _transform(TINY_RESOLUTION), name="color-test", batch_size=batch_size)
