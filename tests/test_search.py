import torch

from clip_app.search import top_k
from tests.support.fakes import COLOUR_NAMES, solid_image


def unit(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_best_first_with_scores():
    feats = unit([[1, 0], [0, 1], [1, 1]])
    ids = torch.tensor([10, 11, 12])
    scores, rows = top_k(unit([[1, 0.1]])[0], feats, ids, 2)
    assert rows.tolist() == [0, 2]
    torch.testing.assert_close(scores, feats[[0, 2]] @ unit([[1, 0.1]])[0])


def test_ties_go_to_the_lower_id():
    feats = unit([[1, 0], [0, 1], [1, 0], [1, 0]])
    ids = torch.tensor([30, 5, 7, 20])
    _, rows = top_k(torch.tensor([1.0, 0.0]), feats, ids, 2)
    assert ids[rows].tolist() == [7, 20]
    _, rows = top_k(torch.tensor([1.0, 0.0]), feats, ids, 4)
    assert ids[rows].tolist() == [7, 20, 30, 5]


def test_k_larger_than_n_and_empty():
    feats = unit([[1, 0], [0, 1]])
    scores, rows = top_k(torch.tensor([0.0, 1.0]), feats, torch.tensor([1, 2]), 50)
    assert rows.tolist() == [1, 0] and len(scores) == 2
    scores, rows = top_k(torch.tensor([0.0, 1.0]), torch.empty(0, 2), torch.empty(0, dtype=torch.long), 5)
    assert len(scores) == 0 and len(rows) == 0
    assert len(top_k(torch.tensor([0.0, 1.0]), feats, torch.tensor([1, 2]), 0)[1]) == 0


def test_matches_a_full_sort_on_random_data():
    torch.manual_seed(0)
    feats = unit(torch.randn(500, 16).tolist())
    ids = torch.randperm(10_000)[:500]
    query = unit([torch.randn(16).tolist()])[0]
    scores, rows = top_k(query, feats, ids, 25)
    expected = sorted(range(500), key=lambda i: (-float(feats[i] @ query), int(ids[i])))[:25]
    assert rows.tolist() == expected


def test_a_text_query_finds_the_right_image(colour_encoder):
    images = [solid_image(c) for c in COLOUR_NAMES]
    feats = colour_encoder.encode_images(images)
    ids = torch.arange(len(images)) + 100
    for i, colour in enumerate(COLOUR_NAMES):
        query = colour_encoder.encode_texts([f"a {colour} picture"])[0]
        _, rows = top_k(query, feats, ids, 3)
        assert rows[0] == i
