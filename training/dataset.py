"""ImgFlip575K loading: the seed's normalisation and filter, a stable split, and a packed cache.

The filter is the evaluation protocol, so it is deliberately the seed's: each box lower-cased and
stripped, boxes joined by one <sep>, kept only if under 200 symbols and made of the 68 characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.vocab import Vocab, normalize_box

log = logging.getLogger(__name__)

MAX_SYMBOLS = 200  # joined caption length limit (exclusive), a <sep> counts as one
VAL_PERCENT = 5  # share of memes in the validation split, chosen by URL hash
# Bump when the filter or the packed layout changes, so old caches are not reused.
LOADER_VERSION = 3

# Why a meme was dropped; the order is the order of the checks.
DROP_UNREADABLE = "unreadable file"
DROP_MALFORMED = "malformed entry"
DROP_NO_BOXES = "no boxes"
DROP_BAD_CHARS = "characters outside the 68"
DROP_TOO_LONG = "200 symbols or more"


@dataclass
class TemplateStats:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)


@dataclass
class PackedDataset:
    """All kept memes, as flat arrays: 369k memes load in well under a second."""

    templates: list[str]  # dataset names (file stems), sorted; a meme's template is an index into this
    tokens: np.ndarray  # uint8 [total]: every caption's vocab ids back to back, no <start>/<end>
    offsets: np.ndarray  # int64 [n + 1]: caption i is tokens[offsets[i]:offsets[i + 1]]
    template_index: np.ndarray  # int16 [n]
    is_val: np.ndarray  # bool [n]
    votes: np.ndarray  # int64 [n] (imgflip "img-votes")
    views: np.ndarray  # int64 [n]
    fingerprint: str  # of the kept captions and their split: what a checkpoint was trained on
    stats: dict[str, TemplateStats]

    def __len__(self) -> int:
        return len(self.template_index)

    def caption(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def split(self, val: bool) -> np.ndarray:
        """Indices of the memes in one split."""
        return np.flatnonzero(self.is_val == val)

    def boxes(self, i: int, vocab: Vocab) -> list[str]:
        return vocab.decode_boxes(self.caption(i).tolist())


def _to_int(value: object) -> int:
    """imgflip counts come as strings with thousands separators ("2,426")."""
    try:
        return int(str(value).replace(",", "").strip() or 0)
    except ValueError:
        return 0


def is_validation(url: str) -> bool:
    """Deterministic split: the same meme is in the same split on every machine and run."""
    digest = hashlib.sha1(url.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VAL_PERCENT


def normalize_meme(entry: object, vocab: Vocab) -> tuple[list[str] | None, str | None]:
    """(boxes, None) for a kept meme, (None, reason) for a dropped one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("boxes"), list):
        return None, DROP_MALFORMED
    raw = entry["boxes"]
    if not all(isinstance(b, str) for b in raw):
        return None, DROP_MALFORMED
    if not raw:
        return None, DROP_NO_BOXES
    boxes = [normalize_box(b) for b in raw]
    if not all(vocab.is_known(c) for b in boxes for c in b):
        return None, DROP_BAD_CHARS
    if sum(len(b) for b in boxes) + len(boxes) - 1 >= MAX_SYMBOLS:
        return None, DROP_TOO_LONG
    return boxes, None


def meme_files(dataset_dir: Path) -> list[Path]:
    memes_dir = Path(dataset_dir) / "memes"
    if not memes_dir.is_dir():
        raise FileNotFoundError(
            f"no memes/ folder in {dataset_dir}: point [paths] dataset (or MEMEBOT_DATASET) at an "
            "ImgFlip575K-layout folder"
        )
    return sorted(memes_dir.glob("*.json"))


def source_fingerprint(dataset_dir: Path) -> str:
    """Changes whenever a caption file is added, removed or modified (names, sizes, times: cheap,
    so it keys the cache; the same data copied elsewhere gets another one)."""
    h = hashlib.sha256(f"v{LOADER_VERSION}".encode())
    for path in meme_files(dataset_dir):
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def iter_raw_memes(path: Path) -> Iterator[object]:
    """The entries of one caption file; raises ValueError when the file is not a JSON list."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path.name}: expected a JSON list of memes")
    yield from data


def content_fingerprint(
    templates: list[str], tokens: np.ndarray, offsets: np.ndarray, is_val: np.ndarray
) -> str:
    """Identical on every machine that holds the same captions, whatever the file times."""
    h = hashlib.sha256("\0".join(templates).encode())
    for array in (tokens, offsets, is_val):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def build_dataset(dataset_dir: Path, vocab: Vocab) -> PackedDataset:
    files = meme_files(dataset_dir)
    templates = [p.stem for p in files]
    stats = {name: TemplateStats() for name in templates}
    captions: list[list[int]] = []
    template_index: list[int] = []
    is_val: list[bool] = []
    votes: list[int] = []
    views: list[int] = []
    for t, path in enumerate(files):
        try:
            entries = list(iter_raw_memes(path))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("skipping %s: %s", path.name, exc)
            stats[path.stem].dropped[DROP_UNREADABLE] += 1
            continue
        for entry in entries:
            boxes, reason = normalize_meme(entry, vocab)
            if boxes is None:
                stats[path.stem].dropped[reason] += 1
                continue
            stats[path.stem].kept += 1
            captions.append(vocab.encode_boxes(boxes))
            template_index.append(t)
            url = str(entry.get("url") or entry.get("post") or json.dumps(entry["boxes"]))
            is_val.append(is_validation(url))
            meta = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
            votes.append(_to_int(meta.get("img-votes", 0)))
            views.append(_to_int(meta.get("views", 0)))
    lengths = np.array([len(c) for c in captions], dtype=np.int64)
    offsets = np.zeros(len(captions) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((i for c in captions for i in c), dtype=np.uint8, count=int(offsets[-1]))
    split = np.array(is_val, dtype=bool)
    return PackedDataset(
        templates=templates,
        tokens=tokens,
        offsets=offsets,
        template_index=np.array(template_index, dtype=np.int16),
        is_val=split,
        votes=np.array(votes, dtype=np.int64),
        views=np.array(views, dtype=np.int64),
        fingerprint=content_fingerprint(templates, tokens, offsets, split),
        stats=stats,
    )


def save_packed(dataset: PackedDataset, path: Path) -> None:
    """Write the packed form that load_dataset reads back from a `.npz` path (~30 MB)."""
    _save(dataset, path)


def _save(dataset: PackedDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = {k: {"kept": v.kept, "dropped": dict(v.dropped)} for k, v in dataset.stats.items()}
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        tokens=dataset.tokens,
        offsets=dataset.offsets,
        template_index=dataset.template_index,
        is_val=dataset.is_val,
        votes=dataset.votes,
        views=dataset.views,
        meta=np.array(
            json.dumps({"templates": dataset.templates, "fingerprint": dataset.fingerprint, "stats": stats})
        ),
    )
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a cache


def _load(path: Path) -> PackedDataset:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        stats = {k: TemplateStats(v["kept"], Counter(v["dropped"])) for k, v in meta["stats"].items()}
        return PackedDataset(
            templates=meta["templates"],
            tokens=z["tokens"],
            offsets=z["offsets"],
            template_index=z["template_index"],
            is_val=z["is_val"],
            votes=z["votes"],
            views=z["views"],
            fingerprint=meta["fingerprint"],
            stats=stats,
        )


def load_dataset(
    dataset_dir: Path, cache_dir: Path | None = None, vocab: Vocab | None = None
) -> PackedDataset:
    """Load (and cache) an ImgFlip575K-layout folder. The cache is keyed by the source fingerprint.
    `dataset_dir` may also be a packed file (`memebot data pack`): the way to take the data to a
    machine that has no copy of the folder, such as a lent GPU machine."""
    if dataset_dir.suffix == ".npz" and dataset_dir.is_file():
        return _load(dataset_dir)
    vocab = vocab or Vocab()
    source = source_fingerprint(dataset_dir)
    cache = Path(cache_dir) / f"dataset-{source[:20]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        try:
            return _load(cache)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable dataset cache %s: %s", cache, exc)
    dataset = build_dataset(dataset_dir, vocab)
    if cache is not None:
        try:
            _save(dataset, cache)
        except OSError as exc:  # a read-only cache location must not stop training
            log.warning("could not write dataset cache %s: %s", cache, exc)
    return dataset
