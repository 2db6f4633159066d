"""Picking the template from the text: how often the model's first choice is the meme's template.

    .venv/bin/python bench/pick.py [--n 1000] [--seed 0] [--checkpoint PATH] [--threads 2]

N validation memes (fixed seed; memes with an empty first box and templates the model does not
know are left out) are each given their first box, and every template the model knows is ranked
for it. Prints how often the meme's real template is ranked first and among the first five, and
the milliseconds per pick, for:
- the model: log P(first box | template), one pass with a row per template (model/pick.py),
  which is what `memebot pick` and a chat's /meme without a template name use;
- the same plus log P(template) from the training split's template counts (a prior the
  checkpoint does not carry; shown to say what it would add);
- word overlap: the template whose training first boxes are closest in tf-idf words (cosine to
  the mean of their vectors), the baseline;
- word counts: multinomial naive Bayes on the training first boxes' words (with the prior).
Every baseline is built from the training split only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import load_config  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.pick import score_ids  # noqa: E402
from model.vocab import SEP, Vocab  # noqa: E402
from training.batches import template_id_map  # noqa: E402
from training.dataset import PackedDataset, load_dataset  # noqa: E402

WORDS = r"[a-z0-9']+"  # what the baselines count as a word


@dataclass
class Tally:
    """How one way of picking did."""

    name: str
    first: int = 0
    top5: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, ranked: list[str], truth: str, seconds: float) -> None:
        self.first += ranked[0] == truth
        self.top5 += truth in ranked[:5]
        self.seconds.append(seconds)

    def row(self, n: int) -> str:
        ms = 1000 * statistics.median(self.seconds) if self.seconds else 0.0
        return f"{self.name:<52} {self.first / n:>7.1%} {self.top5 / n:>7.1%} {ms:>9.2f}"


def first_box(dataset: PackedDataset, i: int) -> np.ndarray:
    """Meme i's first box as vocab ids (the caption up to its first <sep>)."""
    caption = dataset.caption(i)
    seps = np.flatnonzero(caption == SEP)
    return caption[: seps[0]] if len(seps) else caption


def word_baselines(
    dataset: PackedDataset, train: np.ndarray, vocab: Vocab, names: list[str]
) -> tuple[Callable[[str], list[str]], Callable[[str], list[str]]]:
    """(tf-idf nearest template, naive Bayes), each text -> `names` best first, fitted on the
    first boxes of the training memes of those templates."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.preprocessing import normalize

    index = {name: k for k, name in enumerate(names)}
    texts, labels = [], []
    for i in train:
        name = dataset.templates[dataset.template_index[i]]
        ids = first_box(dataset, i)
        if name in index and len(ids):
            texts.append("".join(vocab.symbols[t] for t in ids))
            labels.append(index[name])
    y = np.array(labels)

    tfidf = TfidfVectorizer(token_pattern=WORDS)
    x = tfidf.fit_transform(texts)  # rows L2-normalised
    members = np.zeros((len(names), len(y)))
    members[y, np.arange(len(y))] = 1.0
    centroids = normalize(x.T.dot(members.T).T)  # [templates, words]: each template's mean direction

    def overlap(text: str) -> list[str]:
        cosine = np.asarray(tfidf.transform([text]) @ centroids.T).ravel()
        return [names[k] for k in np.argsort(-cosine, kind="stable")]

    counts = CountVectorizer(token_pattern=WORDS)
    bayes = MultinomialNB().fit(counts.fit_transform(texts), y)

    def naive_bayes(text: str) -> list[str]:
        logp = bayes.predict_log_proba(counts.transform([text]))[0]
        return [names[bayes.classes_[k]] for k in np.argsort(-logp, kind="stable")]

    return overlap, naive_bayes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="validation memes (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = load_config()
    torch.set_num_threads(args.threads)
    vocab = Vocab()
    checkpoint = load_checkpoint(args.checkpoint or config.checkpoint_path)
    model = checkpoint.build().eval()
    names = list(checkpoint.templates)
    dataset = load_dataset(config.dataset_dir, config.cache_dir)
    known = template_id_map(dataset, names)[dataset.template_index] > 0  # [memes]
    val = [i for i in dataset.split(val=True) if known[i] and len(first_box(dataset, i))]
    chosen = np.random.default_rng(args.seed).choice(val, size=min(args.n, len(val)), replace=False)
    train = dataset.split(val=False)

    started = time.perf_counter()
    overlap, naive_bayes = word_baselines(dataset, train, vocab, names)
    fitted_s = time.perf_counter() - started
    counts = np.bincount(dataset.template_index[train], minlength=len(dataset.templates))
    log_prior = {name: float(np.log(max(1, counts[dataset.templates.index(name)]))) for name in names}

    tallies = [
        Tally("model: log P(text | template), one pass"),
        Tally("model + log P(template) from training counts"),
        Tally("word overlap (tf-idf, nearest template)"),
        Tally("word counts (naive Bayes, with the prior)"),
    ]
    symbols = []
    for done, i in enumerate(chosen, 1):
        truth = dataset.templates[dataset.template_index[i]]
        ids = first_box(dataset, i).tolist()
        text = "".join(vocab.symbols[t] for t in ids)
        symbols.append(len(ids))
        t = time.perf_counter()
        scores = score_ids(model, checkpoint, ids, names)
        elapsed = time.perf_counter() - t
        tallies[0].add(list(scores.templates), truth, elapsed)
        with_prior = {
            name: s + log_prior[name] for name, s in zip(scores.templates, scores.scores, strict=True)
        }
        tallies[1].add(sorted(with_prior, key=lambda name: -with_prior[name]), truth, elapsed)
        for tally, rank in ((tallies[2], overlap), (tallies[3], naive_bayes)):
            t = time.perf_counter()
            ranked = rank(text)
            tally.add(ranked, truth, time.perf_counter() - t)
        if done % 100 == 0:
            print(f"  {done}/{len(chosen)}: model first {tallies[0].first / done:.1%}", file=sys.stderr)

    n = len(chosen)
    print(
        f"{n} validation memes (seed {args.seed}), given the first box (median {statistics.median(symbols):.0f} "
        f"symbols), {len(names)} templates; {args.threads} threads; baselines fitted in {fitted_s:.0f} s"
    )
    print(f"{'':<52} {'first':>7} {'top 5':>7} {'ms/pick':>9}")
    for tally in tallies:
        print(tally.row(n))
    print(f"{'chance':<52} {1 / len(names):>7.1%} {5 / len(names):>7.1%}")


if __name__ == "__main__":
    main()
