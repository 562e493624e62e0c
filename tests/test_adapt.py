"""Few-shot heads (clip_app.adapt) on features of the colour model: names that mean nothing, meaningful names,
the linear probe against scikit-learn, and hyper-parameters chosen on the examples only."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from clip_app.adapt import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_LAMBDA,
    METHODS,
    AdaptError,
    Examples,
    adapt,
    choose_lambda,
    choose_tip,
    fit_logistic,
    linear_probe,
    parse_methods,
    prototype_head,
    stratified_folds,
    tip_head,
)
from clip_app.classify import build_classifier
from tests.support.fakes import color_encoder
from tests.support.fewshot_helpers import MEANINGLESS, colour_split

TEMPLATE = ("a photo of a {}.",)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


@pytest.fixture(scope="module")
def meaningless() -> tuple[torch.Tensor, Examples, torch.Tensor, torch.Tensor]:
    """Five classes named 'type A'..'type E' (no colour word) whose images are five jittered colours."""
    encoder = color_encoder()
    colours = list(MEANINGLESS.values())
    train, train_labels = colour_split(encoder, colours, 8, seed=1)
    val, val_labels = colour_split(encoder, colours, 12, seed=2)
    weights = build_classifier(encoder, list(MEANINGLESS), TEMPLATE)
    return weights, Examples(train, train_labels, len(colours)), val, val_labels


def test_meaningless_names_zero_shot_at_chance_every_method_learns_from_8_shots(meaningless) -> None:
    weights, examples, val, val_labels = meaningless
    zero = accuracy(adapt("zeroshot", weights, examples).logits(val), val_labels)
    assert zero <= 1 / 5 + 1e-6  # every class column is the same text feature: no better than chance
    for method in METHODS[1:]:
        head = adapt(method, weights, examples)
        assert head.method == method
        assert accuracy(head.logits(val), val_labels) >= 0.9, (method, head.params)


def test_meaningful_names_adaptation_does_not_lose_to_zero_shot() -> None:
    encoder = color_encoder()
    colours = ["orange", "yellow", "red", "brown"]  # near neighbours: zero-shot is good, not perfect
    train, train_labels = colour_split(encoder, colours, 8, seed=3, spread=70)
    val, val_labels = colour_split(encoder, colours, 30, seed=4, spread=70)
    weights = build_classifier(encoder, colours, TEMPLATE)
    examples = Examples(train, train_labels, len(colours))
    zero = accuracy(adapt("zeroshot", weights, examples).logits(val), val_labels)
    assert 0.5 < zero < 1.0
    for method in METHODS[1:]:
        assert accuracy(adapt(method, weights, examples).logits(val), val_labels) >= zero, method


def test_linear_probe_matches_scikit_learn_on_the_same_features(meaningless) -> None:
    _, examples, val, val_labels = meaningless
    for c in (1.0, 100.0):
        weight, bias = fit_logistic(examples.features, examples.labels, examples.n_classes, c, max_iter=500,
                                    tol=1e-7)
        ref = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(examples.features.double().numpy(),
                                                                   examples.labels.numpy())
        ours = val @ weight + bias
        theirs = torch.from_numpy(ref.decision_function(val.double().numpy())).float()
        assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.98
        assert abs(accuracy(ours, val_labels) - float(ref.score(val.double().numpy(), val_labels.numpy()))) <= 0.02
        # the same optimum up to the logits' shift (softmax is shift invariant): compare centred logits
        centred = (ours - ours.mean(1, keepdim=True)) - (theirs - theirs.mean(1, keepdim=True))
        assert float(centred.abs().max()) <= 0.05 * float(theirs.abs().max()) + 1e-3


def test_zero_shot_start_and_wise_mix_reach_the_same_probe(meaningless) -> None:
    weights, examples, val, _ = meaningless
    plain = linear_probe(None, examples, c=10.0)
    started = linear_probe(weights, examples, c=10.0, wise=1.0)  # t = 1: the probe alone, from the zero-shot start
    assert torch.allclose(plain.logits(val).softmax(1), started.logits(val).softmax(1), atol=0.02)
    half = linear_probe(weights, examples, c=10.0, wise=0.5)
    expected = 0.5 * 100 * val @ weights + 0.5 * started.logits(val)
    assert torch.allclose(half.logits(val), expected, atol=1e-3)


def test_one_example_per_label_uses_the_documented_defaults(meaningless) -> None:
    weights, examples, _, _ = meaningless
    one = examples.subset(torch.tensor([int((examples.labels == c).nonzero()[0]) for c in range(5)]))
    assert not one.tunable()
    assert choose_lambda(weights, one) == DEFAULT_LAMBDA
    assert choose_tip(weights, one) == (DEFAULT_ALPHA, DEFAULT_BETA)
    assert prototype_head(weights, one).params == {"lambda": DEFAULT_LAMBDA}
    assert tip_head(weights, one).params == {"alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA}


def test_labels_without_examples_keep_their_zero_shot_column() -> None:
    encoder = color_encoder()
    weights = build_classifier(encoder, ["red", "green", "blue"], TEMPLATE)
    feats, labels = colour_split(encoder, ["red", "green"], 3, seed=5)
    examples = Examples(feats, labels, 3)  # no example of blue
    blue, _ = colour_split(encoder, ["blue"], 4, seed=6)
    for method in ("prototype", "tip"):
        assert adapt(method, weights, examples).logits(blue).argmax(1).tolist() == [2] * 4, method
    with pytest.raises(AdaptError, match="every label"):
        linear_probe(weights, examples)


def test_hyper_parameters_depend_on_the_examples_only(meaningless) -> None:
    """Choosing changes with the examples (so a test could see it) but no function takes evaluation data."""
    weights, examples, _, _ = meaningless
    shuffled = Examples(examples.features, examples.labels[torch.randperm(len(examples.labels),
                                                                            generator=torch.Generator().manual_seed(0))],
                        examples.n_classes)
    assert choose_lambda(weights, examples) != choose_lambda(weights, shuffled)


def test_bad_input_is_a_clear_error(meaningless) -> None:
    weights, examples, _, _ = meaningless
    with pytest.raises(AdaptError, match="labels must lie"):
        Examples(examples.features, examples.labels + 10, 5)
    with pytest.raises(AdaptError, match=r"\[D, 4\]"):
        adapt("tip", weights, Examples(examples.features, examples.labels.clamp_max(3), 4))
    with pytest.raises(AdaptError, match="unknown few-shot method"):
        adapt("magic", weights, examples)
    with pytest.raises(AdaptError, match="choose from"):
        parse_methods("tip,nope")
    assert parse_methods("linear, zeroshot") == ("zeroshot", "linear")


def test_stratified_folds_cover_every_example_once() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    folds = stratified_folds(labels, 2)
    assert sorted(torch.cat(folds).tolist()) == list(range(9))
    for fold in folds:
        assert set(labels[fold].tolist()) == {0, 1, 2}


def test_leave_one_out_choices_match_a_brute_force_refit(meaningless) -> None:
    """The closed-form leave-one-out of the prototype blend and the masked one of Tip-Adapter give the choice a
    refit without each example gives."""
    from clip_app.adapt import ALPHA_GRID, BETA_GRID, LAMBDA_GRID, _best, _score

    weights, examples, _, _ = meaningless
    gen = torch.Generator().manual_seed(0)
    weights = torch.nn.functional.normalize(weights + 0.3 * torch.randn(weights.shape, generator=gen), dim=0)
    small = examples.subset(torch.arange(0, len(examples.labels), 2))  # 4 per class

    def loo_logits(make_head) -> torch.Tensor:
        rows = []
        for i in range(len(small.labels)):
            keep = torch.tensor([j for j in range(len(small.labels)) if j != i])
            rows.append(make_head(small.subset(keep)).logits(small.features[i:i + 1])[0])
        return torch.stack(rows)

    lam_scores = [_score(loo_logits(lambda ex, lam=lam: prototype_head(weights, ex, lam)), small.labels)
                  for lam in LAMBDA_GRID]
    assert choose_lambda(weights, small) == LAMBDA_GRID[_best(lam_scores)]
    pairs = [(a, b) for b in BETA_GRID for a in ALPHA_GRID]
    tip_scores = [_score(loo_logits(lambda ex, a=a, b=b: tip_head(weights, ex, a, b)), small.labels) for a, b in pairs]
    assert choose_tip(weights, small) == pairs[_best(tip_scores)]
