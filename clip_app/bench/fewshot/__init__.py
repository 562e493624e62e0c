"""Few-shot top-1 of zero-shot, prototype blend, Tip-Adapter and a linear probe: `python -m clip_app.bench fewshot`.

k examples per class are drawn from DIR/train (or the ImageNet training folders) with each seed, every method is
fitted on them alone (hyper-parameters by leave-one-out / k-fold on the shots, never on val) and scored on all of
val; features are cached on disk. Writes fewshot-<model>.json, fewshot.md (the published Tip-Adapter anchors
beside) and fewshot-<model>.png.
"""

from .cli import add_arguments, run

__all__ = ["add_arguments", "run"]
