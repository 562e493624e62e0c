"""Retrieval metrics and Flickr8k analyses on hand-made score matrices (images = identity, so scores = text rows)."""

from __future__ import annotations

import pytest
import torch

from clip_app.bench.flickr8k.analysis import gallery_size_curve, pick_examples, recall_by_length, word_count
from clip_app.bench.flickr8k.metrics import (
    image_to_text_ranks,
    median_rank,
    rank_gallery,
    recall_at_k,
    retrieval_metrics,
    subset_captions,
    text_to_image_ranks,
)

# 3 images, 5 captions; with identity image features the score of caption t and image i is SCORES[t, i]
SCORES = torch.tensor([
    [0.9, 0.1, 0.0],   # caption 0 of image 0: rank 1
    [0.2, 0.5, 0.8],   # caption 1 of image 0: rank 3
    [0.3, 0.3, 0.1],   # caption 2 of image 1: tied with image 0, the lower index goes first: rank 2
    [0.5, 0.1, 0.5],   # caption 3 of image 2: tied with image 0: rank 2
    [0.0, 0.0, 0.7],   # caption 4 of image 2: rank 1
])
OWNER = torch.tensor([0, 0, 1, 2, 2])
IMAGES = torch.eye(3)


def test_text_to_image_ranks_count_the_single_image_and_break_ties_by_index() -> None:
    assert text_to_image_ranks(SCORES, IMAGES, OWNER).tolist() == [1, 3, 2, 2, 1]


def test_image_to_text_rank_is_that_of_the_best_placed_caption() -> None:
    # image 2: its SECOND caption (4, score .7) is behind only caption 1 (.8); its first (3, .5) would be rank 3
    assert image_to_text_ranks(IMAGES, SCORES, OWNER).tolist() == [1, 2, 2]


def test_image_to_text_hit_by_second_caption_only() -> None:
    # 1-d features: image 0 scores the captions [.1, .9, .5, .4], image 1 scores their negatives.
    # Image 0's FIRST caption (.1) is last of four, its SECOND (.9) is first: rank 1.
    texts = torch.tensor([[0.1], [0.9], [0.5], [0.4]])
    images = torch.tensor([[1.0], [-1.0]])
    assert image_to_text_ranks(images, texts, torch.tensor([0, 0, 1, 1])).tolist() == [1, 2]


def test_image_to_text_ties_put_a_lower_index_negative_first() -> None:
    texts = torch.tensor([[0.5], [0.5], [0.5]])  # caption 0 (image 0) ties with captions 1 and 2 (image 1)
    ranks = image_to_text_ranks(torch.tensor([[1.0], [1.0]]), texts, torch.tensor([0, 1, 1]))
    assert ranks.tolist() == [1, 2]


def test_rank_gallery_puts_ties_at_the_lower_index_as_the_ranks_do() -> None:
    order, scores = rank_gallery(torch.tensor([1.0]), torch.tensor([[0.5], [0.9], [0.5], [0.9], [0.1]]))
    assert order.tolist() == [1, 3, 0, 2, 4] and scores.tolist() == pytest.approx([0.5, 0.9, 0.5, 0.9, 0.1])
    ranks = text_to_image_ranks(SCORES, IMAGES, OWNER)
    for t in range(len(SCORES)):  # where the grids show a caption's image is the rank the metrics count
        order, _ = rank_gallery(SCORES[t], IMAGES)
        assert order.tolist().index(int(OWNER[t])) + 1 == ranks[t]
    # 300 rows of 4 kinds (exact scores 1, .5, .75, .25): mostly ties
    kinds = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    gallery = kinds[torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(2))]
    query = torch.tensor([1.0, 0.5, 0.25])
    order, scores = rank_gallery(query, gallery)
    ordered = scores[order]
    tie = ordered[:-1] == ordered[1:]
    assert int(tie.sum()) == 296 and bool((ordered[:-1] >= ordered[1:]).all())
    assert bool((order[:-1][tie] < order[1:][tie]).all())
    expected = torch.empty(300, dtype=torch.long)
    expected[order] = torch.arange(1, 301)
    assert torch.equal(text_to_image_ranks(query.repeat(300, 1), gallery, torch.arange(300)), expected)


def test_recall_and_median() -> None:
    ranks = torch.tensor([1, 3, 2, 2, 1])
    assert recall_at_k(ranks, (1, 2, 5)) == {"R@1": pytest.approx(0.4), "R@2": pytest.approx(0.8), "R@5": 1.0}
    assert median_rank(ranks) == 2.0
    assert median_rank(torch.tensor([1, 2, 3, 10])) == 2.5
    metrics = retrieval_metrics(IMAGES, SCORES, OWNER)
    assert metrics["text_to_image"]["R@1"] == pytest.approx(0.4)
    assert metrics["image_to_text"] == {"R@1": pytest.approx(1 / 3), "R@5": 1.0, "R@10": 1.0, "median_rank": 2.0}


def test_images_without_captions_are_refused() -> None:
    with pytest.raises(ValueError, match="without any caption"):
        image_to_text_ranks(IMAGES, SCORES[:2], OWNER[:2])


def test_chunked_ranks_equal_a_full_stable_sort() -> None:
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(2100, 8), dim=1).round(decimals=1)  # many ties
    owner = torch.arange(2100) % 40
    scores = texts @ images.T
    order = torch.sort(-scores, dim=1, stable=True).indices
    expected = (order == owner[:, None]).float().argmax(dim=1) + 1
    assert torch.equal(text_to_image_ranks(texts, images, owner), expected)
    order_i = torch.sort(-scores.T, dim=1, stable=True).indices  # [I, T]
    hit = owner[order_i] == torch.arange(40)[:, None]
    assert torch.equal(image_to_text_ranks(images, texts, owner), hit.float().argmax(dim=1) + 1)


def test_subset_captions_reindexes() -> None:
    keep, mapped = subset_captions(torch.tensor([0, 0, 1, 2, 2]), [2, 0])
    assert keep.tolist() == [0, 1, 3, 4]
    assert mapped.tolist() == [1, 1, 0, 0]


def test_gallery_size_curve() -> None:
    torch.manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    owner = torch.arange(24) % 12
    texts = torch.nn.functional.normalize(images[owner] + 0.8 * torch.randn(24, 6), dim=1)
    rows = gallery_size_curve(images, texts, owner, sizes=(4, 12, 50), subsets=3, seed=7)
    assert [r["size"] for r in rows] == [4, 12]  # 50 > 12 images: skipped
    assert rows[0]["subsets"] == 3 and rows[1]["subsets"] == 1
    assert rows[1]["text_to_image"] == retrieval_metrics(images, texts, owner)["text_to_image"]
    assert rows[1]["text_to_image_std"]["R@1"] == 0.0
    assert rows == gallery_size_curve(images, texts, owner, sizes=(4, 12, 50), subsets=3, seed=7)  # seeded


def test_recall_by_length_buckets() -> None:
    assert word_count("A dog runs across the grass .") == 6
    captions = ["a b c", "a b c d e f g", "a b c d e f g h", "one " * 25]
    rows = recall_by_length(torch.tensor([1, 2, 1, 7]), captions)
    assert [(r["words"], r["n_captions"], r["R@1"]) for r in rows] == [("1-6", 1, 1.0), ("7-9", 2, 0.5),
                                                                         ("20+", 1, 0.0)]


def test_pick_examples_is_seeded_and_prefers_misses_beyond_top5() -> None:
    ranks = torch.tensor([1, 1, 7, 2, 1, 9])
    ok, bad = pick_examples(ranks, count=2, seed=3)
    assert set(ok) <= {0, 1, 4} and len(ok) == 2
    assert set(bad) == {2, 5}
    assert pick_examples(ranks, count=2, seed=3) == (ok, bad)
    assert pick_examples(torch.tensor([1, 2]), count=2)[1] == [1]
