"""Performance of the multilingual text tower: a Chinese query end to end (encode + top-k) through it beside an
English query through CLIP's own text tower, on the same rows; the app's cold start with and without --text-model.

The tower is clip-ViT-B-32-multilingual-v1's architecture with random weights, built here from its configuration
(a multilingual DistilBERT: 119,547 word pieces, 6 layers of width 768, mean pooling, a 768 -> 512 dense layer), its
tokenizer a word-piece vocabulary of the same size that holds every CJK character (BERT tokenizers read Chinese one
character per token, as the real one does). Speed does not depend on the weight values.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ...encoders import ClipEncoder, RoutedTextEncoder, load_text_model
from ...search import top_k
from .encode import timed
from .setup import query_text, unit_features
from .stats import Results

log = logging.getLogger(__name__)

#: distilbert-base-multilingual-cased, the transformer of clip-ViT-B-32-multilingual-v1 (its config.json)
DISTILBERT_MULTILINGUAL = dict(vocab_size=119547, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                               max_position_embeddings=512, activation="gelu")
ST_DENSE = (768, 512)  #: its Dense module: 768 -> 512, no activation
_ZH_SUBJECTS = ("一只狗", "两个孩子", "一辆红色的汽车", "一位老人", "一群鸟", "一只黑猫", "一个女人", "一艘小船")
_ZH_PLACES = ("在海滩上奔跑", "在公园里玩耍", "停在雪地里", "坐在长椅上", "飞过湖面", "躺在沙发上", "走在街上",
              "漂在河上")


def chinese_query(n: int) -> str:
    """A distinct Chinese query per n (so no repeat is served from the text cache)."""
    return f"{_ZH_SUBJECTS[n % 8]}{_ZH_PLACES[(n // 8) % 8]}，第{n}张照片"


def random_multilingual_tower(folder: Path, seed: int = 0) -> Path:
    """clip-ViT-B-32-multilingual-v1's architecture with random weights, saved as a sentence-transformers folder."""
    if (folder / "modules.json").is_file():
        return folder
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    base = folder.parent / f"{folder.name}-distilbert"
    base.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(chr(c) for c in range(0x4E00, 0xA000)),
             *"，。！？", *sorted({w for n in range(64) for w in query_text(n).split()})]
    words += [f"[unused{i}]" for i in range(DISTILBERT_MULTILINGUAL["vocab_size"] - len(words))]
    (base / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    DistilBertModel(DistilBertConfig(**DISTILBERT_MULTILINGUAL)).save_pretrained(str(base))
    DistilBertTokenizer(str(base / "vocab.txt"), do_lower_case=False).save_pretrained(str(base))
    modules = [Transformer(str(base), max_seq_length=128), Pooling(ST_DENSE[0], "mean"),
               Dense(*ST_DENSE, activation_function=torch.nn.Identity())]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def measure_multilingual(encoder: ClipEncoder, checkpoint: Path, photo: Path, sizes: list[int], repeats: int,
                         k: int, results: Results, workdir: Path, cold_starts: int) -> None:
    """multilingual.* figures: encode and encode + top-k of a Chinese query (multilingual tower) and of an English
    one (CLIP's tower) at 100,000 rows (or the largest size), paired per repeat; app cold start with and without."""
    folder = random_multilingual_tower(workdir / "random-clip-ViT-B-32-multilingual-v1")
    tower = load_text_model(str(folder), device=encoder.device)
    if tower.dim != encoder.dim:
        results.pending["multilingual"] = (f"the multilingual tower gives {tower.dim}-d features, {encoder.name} "
                                           f"{encoder.dim}-d ones: time it with --model ViT-B/32")
        return
    routed = RoutedTextEncoder(encoder, tower, "auto", encoder.identity)
    n = 100_000 if 100_000 in sizes else max(sizes)
    rows = unit_features(n, encoder.dim, seed=n).half()
    ids = torch.arange(1, n + 1, dtype=torch.int64)
    counter = iter(range(10**9))
    routed.encode_texts([chinese_query(next(counter)), query_text(next(counter))])  # warm-up: first calls
    top_k(rows[0].float(), rows, ids, k)
    figures: dict[str, list[float]] = {key: [] for key in ("zh_encode", "en_encode", "zh_query", "en_query",
                                                           "zh_cpu", "en_cpu")}
    for _ in range(max(repeats, 5)):
        zh, en = chinese_query(next(counter)), query_text(next(counter))
        if (routed.tower_for(zh), routed.tower_for(en)) != ("multilingual", "clip"):
            raise RuntimeError(f"routing sent {zh!r} or {en!r} to the wrong tower")
        figures["zh_encode"].append(timed(lambda t=zh: routed.encode_texts([t])))
        figures["en_encode"].append(timed(lambda t=en: routed.encode_texts([t])))
        zh, en = chinese_query(next(counter)), query_text(next(counter))
        for key, text in (("zh", zh), ("en", en)):
            cpu = time.process_time()  # CPU seconds of this process: what a busy machine's other work does not add
            figures[f"{key}_query"].append(timed(lambda t=text: top_k(routed.encode_texts([t])[0], rows, ids, k)))
            figures[f"{key}_cpu"].append(time.process_time() - cpu)
    results.add("multilingual.encode_zh", "Chinese query encode, multilingual tower (random weights)", "s",
                figures["zh_encode"])
    results.add("multilingual.encode_en", "English query encode, CLIP's own text tower", "s", figures["en_encode"])
    results.add(f"multilingual.query_zh.{n}", f"Chinese query, encode + top-{k} at {n:,} rows (multilingual)", "s",
                figures["zh_query"])
    results.add(f"multilingual.query_en.{n}", f"English query, encode + top-{k} at {n:,} rows (CLIP's tower)", "s",
                figures["en_query"])
    results.add(f"multilingual.query_zh_over_en.{n}", "  Chinese query / English query (paired runs)", "x",
                [z / e for z, e in zip(figures["zh_query"], figures["en_query"])])
    results.add(f"multilingual.query_zh_cpu.{n}", "  Chinese query: CPU time of the process (all threads)", "s",
                figures["zh_cpu"])
    results.add(f"multilingual.query_en_cpu.{n}", "  English query: CPU time of the process (all threads)", "s",
                figures["en_cpu"])
    results.add(f"multilingual.query_zh_over_en_cpu.{n}", "  Chinese / English query, CPU time (paired runs)", "x",
                [z / e for z, e in zip(figures["zh_cpu"], figures["en_cpu"])])
    _cold_starts(checkpoint, photo, folder, cold_starts, results, workdir)


def _cold_starts(checkpoint: Path, photo: Path, folder: Path, count: int, results: Results, workdir: Path) -> None:
    """app.cold_start_text_model.* beside app.cold_start_plain.* (alternating fresh processes)."""
    from . import app as perf_app

    if perf_app.app_script() is None:
        results.pending["multilingual.cold_start"] = "app.py is not in this build"
        return
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "text_model": []}
    for r in range(count):
        runs["plain"].append(perf_app.cold_start(checkpoint, photo, workdir / f"ml-cold-{r}"))
        runs["text_model"].append(perf_app.cold_start(checkpoint, photo, workdir / f"ml-cold-t{r}",
                                                      extra_args=("--text-model", str(folder))))
    for kind, label in (("plain", "app cold start without a text model"),
                        ("text_model", "app cold start with --text-model (multilingual tower)")):
        for mark, what in (("ready", "model(s) and library loaded"), ("first_answer", "first /classify answered")):
            values = [run[mark] for run in runs[kind] if mark in run]
            if values:
                results.add(f"app.cold_start_{kind}.{mark}", f"{label}: -> {what}", "s", values)
