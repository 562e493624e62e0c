"""Fine-tuning: `python -m clip_app.finetune retrieval|classify` (see docs/finetune.md)."""

from .errors import FinetuneError

__all__ = ["FinetuneError"]
