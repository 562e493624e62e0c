"""Test-only multilingual text towers: a tiny sentence-transformers model and a tiny M-CLIP folder, random weights.

Both are written to disk in the formats the real models ship in, and loaded by path through the product's loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: a word-piece vocabulary with some Chinese characters and English words
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"一张的照片图猫狗红色绿蓝海滩车花树这是", "a", "photo", "of",
         "the", "cat", "dog", "red", "green", "blue", "car", "##s", ".", ",", "!"]


def _bert_folder(folder: Path, hidden: int, seed: int) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    return folder


def save_tiny_sentence_transformer(folder: Path, dim: int, hidden: int = 16, seed: int = 0) -> Path:
    """A small BERT (random weights) + mean pooling + a Dense layer to `dim`, saved with SentenceTransformer.save."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    base = _bert_folder(folder.parent / f"{folder.name}-bert", hidden, seed)
    transformer = Transformer(str(base), max_seq_length=32)
    torch.manual_seed(seed + 1)
    modules = [transformer, Pooling(hidden, "mean"), Dense(hidden, dim, activation_function=torch.nn.Identity())]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def save_tiny_mclip(folder: Path, dim: int, hidden: int = 16, seed: int = 0) -> Path:
    """A folder in M-CLIP's published format: config.json (model_type 'M-CLIP' + the transformer's fields),
    pytorch_model.bin (transformer.* and LinearTransformation.*) and the tokenizer files."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    _bert_folder(folder, hidden, seed)  # the tokenizer files (the weights are replaced below)
    for stale in ("model.safetensors", "config.json"):
        (folder / stale).unlink(missing_ok=True)
    torch.manual_seed(seed)
    base = dict(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=2 * hidden, max_position_embeddings=66, pad_token_id=0)
    transformer = XLMRobertaModel(XLMRobertaConfig(**base), add_pooling_layer=False)
    linear = torch.nn.Linear(hidden, dim)
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state |= {f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    config = {"model_type": "M-CLIP", "modelBase": "xlm-roberta-large", "transformerDimensions": hidden,
              "numDims": dim, **base}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
