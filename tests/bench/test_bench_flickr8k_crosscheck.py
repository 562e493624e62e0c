"""Cross-check: CLIP_benchmark's own zeroshot_retrieval.evaluate on the same tiny model, images and captions."""

from __future__ import annotations

import random
from pathlib import Path

import clip
import pytest
import torch
from clip_benchmark.metrics import zeroshot_retrieval  # dev dependency, installed with --no-deps (see Makefile)
from torch.utils.data import DataLoader, Dataset

from clip_app.bench.features import encode_image_files
from clip_app.bench.flickr8k.data import Flickr8k, load_flickr8k
from clip_app.bench.flickr8k.metrics import retrieval_metrics
from clip_app.images import open_image
from tests.support.flickr8k_helpers import write_flickr8k

WORDS = ("dog", "cat", "man", "woman", "runs", "sits", "beach", "park", "red", "blue", "snow", "ball", "water")


class _Pairs(Dataset):
    """CLIP_benchmark's retrieval input: (pixels, list of the image's captions)."""

    def __init__(self, data: Flickr8k, preprocess) -> None:
        self.data, self.preprocess = data, preprocess

    def __len__(self) -> int:
        return self.data.n_images

    def __getitem__(self, i: int):
        return (self.preprocess(open_image(self.data.image_paths[i])),
                [self.data.captions[t] for t in self.data.captions_of(i)])


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def _made_up(root: Path, n_images: int = 14, seed: int = 0) -> Flickr8k:
    rng = random.Random(seed)
    images = {f"{i:03d}.jpg": (rng.randrange(256), rng.randrange(256), rng.randrange(256)) for i in range(n_images)}
    captions = {name: [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(rng.randint(2, 4))]
                for name in images}
    return load_flickr8k(write_flickr8k(root, "json", images, captions, None), "test")


def test_recall_matches_clip_benchmark(tmp_path: Path, tiny_encoder) -> None:
    data = _made_up(tmp_path / "d")
    images = encode_image_files(tiny_encoder, data.image_paths, batch_size=4, workers=0, progress=False)
    texts = tiny_encoder.encode_texts(list(data.captions))
    ours = retrieval_metrics(images, texts, torch.tensor(data.caption_image), ks=(1, 5, 10))

    loader = DataLoader(_Pairs(data, tiny_encoder.preprocess), batch_size=4, collate_fn=_collate)
    theirs = zeroshot_retrieval.evaluate(tiny_encoder.model, loader, lambda t: clip.tokenize(t, truncate=True),
                                         "cpu", amp=False, recall_k_list=[1, 5, 10])
    for k in (1, 5, 10):
        assert ours["text_to_image"][f"R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-6)
        assert ours["image_to_text"][f"R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-6)
    # not a degenerate comparison: the random tiny model is far from perfect and from zero
    assert 0.0 < ours["text_to_image"]["R@5"] < 1.0
