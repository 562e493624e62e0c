"""clip-app: zero-shot classification, image search and a feature library around OpenAI CLIP."""

__version__ = "0.1.0"
