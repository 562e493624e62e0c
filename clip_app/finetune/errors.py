"""The fine-tuning error type: bad input or a run that cannot go on; the message says what and what to do."""

from __future__ import annotations


class FinetuneError(ValueError):
    """Fine-tuning cannot start or go on (too little data, a missing split, an occupied --out, a NaN loss, ...)."""
