"""Retrieval quality of a searcher against a benchmark's ground truth (mAP, P@k, R@k, N-S).

Every query (an indexed image, searched with its own stored vector) is ranked against the whole
database through the same :class:`~cbir.search.base.Searcher` interface as queries (AP needs the
full ranking, not a top-k), with the query itself left out, except in the UKBench N-S score whose
protocol counts it. Queries are processed in blocks, and a block holds at most
``MAX_BLOCK_ELEMENTS`` scores, so a 100k-image set is evaluated in bounded memory. Queries with no
relevant image are left out of every mean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.core.errors import DatasetError
from cbir.core.types import JSONDict
from cbir.evaluation.groundtruth import GroundTruth, LabelRelevance, load_ground_truth
from cbir.evaluation.metrics import average_precisions, hits_at_k
from cbir.search.base import Searcher, check_finite
from cbir.search.exact import ExactSearcher
from cbir.search.rerank import Reranking, rerank
from cbir.stores.base import IndexReader

log = logging.getLogger(__name__)

MAX_BLOCK_ELEMENTS = 1 << 24
"""At most this many (query, image) scores per block: ~64 MB of scores plus ~128 MB of sort order."""

NS_TOP = 4
"""The UKBench N-S score counts the query's group images (4, itself included) among its top 4."""


@dataclass
class ClassRow:
    """Per-class (or per-group) summary: how many queries, their mAP and mean P@10."""

    label: str
    name: str | None
    n_queries: int
    map: float
    p_at_10: float | None

    def to_dict(self) -> JSONDict:
        return {
            "label": self.label,
            "name": self.name,
            "n_queries": self.n_queries,
            "map": round(self.map, 6),
            "p_at_10": None if self.p_at_10 is None else round(self.p_at_10, 6),
        }


@dataclass
class EvaluationReport:
    """Overall and per-class retrieval quality; ``precision``/``recall`` are keyed by k."""

    kind: str
    n_images: int
    n_queries: int
    map: float
    precision: dict[int, float]
    recall: dict[int, float]
    ns_score: float | None = None
    per_class: list[ClassRow] = field(default_factory=list)
    per_query: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> JSONDict:
        """JSON-ready form; k keys become strings."""
        return {
            "ground_truth": self.kind,
            "n_images": self.n_images,
            "n_queries": self.n_queries,
            "map": round(self.map, 6),
            "precision": {str(k): round(v, 6) for k, v in self.precision.items()},
            "recall": {str(k): round(v, 6) for k, v in self.recall.items()},
            "ns_score": None if self.ns_score is None else round(self.ns_score, 6),
            "per_class": [row.to_dict() for row in self.per_class],
            "per_query_ap": {q: round(ap, 6) for q, ap in self.per_query.items()},
            "skipped_queries": list(self.skipped),
        }

    def format_table(self, max_classes: int | None = 50) -> str:
        """Overall metrics, then one line per class (the first ``max_classes`` of them)."""
        lines = [
            f"{self.n_queries} queries over {self.n_images} images (ground truth: {self.kind})",
            f"mAP        {self.map:.4f}",
        ]
        if self.ns_score is not None:
            lines.append(f"N-S score  {self.ns_score:.3f} / 4")
        if self.skipped:
            lines.append(f"skipped    {len(self.skipped)} queries with no relevant image")
        if self.precision:
            ks = list(self.precision)
            lines.append("")
            lines.append("k       " + "".join(f"{k:>9d}" for k in ks))
            lines.append("P@k     " + "".join(f"{self.precision[k]:>9.4f}" for k in ks))
            lines.append("R@k     " + "".join(f"{self.recall[k]:>9.4f}" for k in ks))
        if self.per_class:
            rows = self.per_class if max_classes is None else self.per_class[:max_classes]
            names = [r.label if r.name is None else f"{r.label} {r.name}" for r in rows]
            width = max(5, *(len(n) for n in names))
            lines.append("")
            lines.append(f"{'class':<{width}}  {'queries':>7}  {'mAP':>6}  {'P@10':>6}")
            for name, r in zip(names, rows):
                p10 = "-" if r.p_at_10 is None else f"{r.p_at_10:.4f}"
                lines.append(f"{name:<{width}}  {r.n_queries:>7d}  {r.map:>6.4f}  {p10:>6}")
            if len(rows) < len(self.per_class):
                lines.append(f"... and {len(self.per_class) - len(rows)} more classes")
        return "\n".join(lines)


class _Relevance:
    """Relevance of every indexed row for a block of queries, from labels or explicit sets."""

    def __init__(self, gt: GroundTruth, row_of: dict[str, int], n: int) -> None:
        self.n = n
        self.row_label: np.ndarray | None = None
        if isinstance(gt.relevant, LabelRelevance):
            ids = {label: i for i, label in enumerate(sorted(set(gt.relevant.labels.values())))}
            self.row_label = np.full(n, -1, dtype=np.int64)
            for path, label in gt.relevant.labels.items():
                self.row_label[row_of[path]] = ids[label]
            self.label_size = np.bincount(self.row_label[self.row_label >= 0], minlength=len(ids))
        self.gt = gt
        self.row_of = row_of

    def block(self, queries: Sequence[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rel (B, N) bool with rel[b, rows[b]] False, n_relevant (B,))``."""
        if self.row_label is not None:
            qlabel = self.row_label[rows]
            rel = self.row_label[None, :] == qlabel[:, None]
            n_rel = self.label_size[qlabel] - 1
        else:
            rel = np.zeros((len(rows), self.n), dtype=bool)
            for b, q in enumerate(queries):
                rel[b, [self.row_of[p] for p in self.gt.relevant[q]]] = True
            n_rel = rel.sum(axis=1)
        rel[np.arange(len(rows)), rows] = False
        return rel, np.asarray(n_rel, dtype=np.int64)


def _check_paths(gt: GroundTruth, row_of: dict[str, int]) -> None:
    if isinstance(gt.relevant, LabelRelevance):
        listed = set(gt.queries) | set(gt.relevant.labels)
    else:
        listed = set(gt.queries).union(*(gt.relevant[q] for q in gt.queries))
    missing = sorted(p for p in listed if p not in row_of)
    if missing:
        raise DatasetError(
            f"{len(missing)} ground-truth images are not in the index (first: {missing[0]}); "
            "load the ground truth with the index's paths"
        )


def evaluate(
    database: np.ndarray | Searcher,
    paths: Sequence[str],
    gt: GroundTruth,
    ks: Sequence[int] = (1, 5, 10, 20, 100),
    block: int = 1024,
) -> EvaluationReport:
    """Rank every image for each query of ``gt`` and measure mAP, P@k, R@k (and N-S for UKBench).

    ``database`` is the feature matrix (``feats[i]`` the L2-normalised feature of ``paths[i]``,
    searched exactly) or any :class:`~cbir.search.base.Searcher` over those rows, e.g. one with
    re-ranking; each query's vector is the searcher's own row (so DBA applies to queries too).
    ``block`` caps the queries searched at once (further capped so a block holds at most
    ``MAX_BLOCK_ELEMENTS`` scores). k values larger than the number of ranked images are left out.
    Ties rank the lower row first.
    """
    searcher = ExactSearcher(database) if isinstance(database, np.ndarray) else database
    n = len(searcher)
    if len(paths) != n:
        raise ValueError(f"{n} feature rows but {len(paths)} paths")
    if block < 1:
        raise ValueError("block must be at least 1")
    if len(set(gt.queries)) != len(gt.queries):
        raise ValueError("ground truth lists a query twice")
    row_of = {p: i for i, p in enumerate(paths)}
    _check_paths(gt, row_of)
    n_ranked = n - 1
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise ValueError("every k must be at least 1")
    dropped = [k for k in ks if k > n_ranked]
    if dropped:
        log.info("k = %s exceed the %d ranked images; left out", dropped, n_ranked)
    ks = [k for k in ks if k <= n_ranked]
    relevance = _Relevance(gt, row_of, n)

    done: list[str] = []
    aps: list[np.ndarray] = []
    hits: dict[int, list[np.ndarray]] = defaultdict(list)
    counts: list[np.ndarray] = []
    p10: list[np.ndarray] = []
    ns_hits: list[np.ndarray] = []
    skipped: list[str] = []
    step = max(1, min(block, MAX_BLOCK_ELEMENTS // max(n, 1)))
    for start in range(0, len(gt.queries), step):
        names = gt.queries[start : start + step]
        rows = np.array([row_of[q] for q in names], dtype=np.int64)
        rel, n_rel = relevance.block(names, rows)
        keep = n_rel > 0
        if not keep.all():
            skipped.extend(q for q, k in zip(names, keep) if not k)
            names = [q for q, k in zip(names, keep) if k]
            rows, rel, n_rel = rows[keep], rel[keep], n_rel[keep]
        if not len(rows):
            continue
        qvecs = searcher.vectors(rows)
        check_finite(qvecs)  # the queries are database rows: a damaged one is the index's fault
        if gt.ukbench:
            ns_hits.append(_ns_hits(searcher, qvecs, rows, rel))
        ranked = searcher.search(qvecs, n_ranked, exclude=[[int(r)] for r in rows])[0]
        if ranked.shape != (len(rows), n_ranked):
            raise ValueError(f"the searcher returned shape {ranked.shape}, expected {(len(rows), n_ranked)}")
        ranked_rel = np.take_along_axis(rel, ranked, axis=1)
        del ranked, rel
        done.extend(names)
        aps.append(average_precisions(ranked_rel, n_rel))
        for k in ks:
            hits[k].append(hits_at_k(ranked_rel, k))
        if n_ranked >= 10:
            p10.append(hits_at_k(ranked_rel, 10) / 10.0)
        counts.append(n_rel)

    if skipped:
        log.warning("%d queries have no relevant image among the indexed ones; left out", len(skipped))
    if not done:
        raise DatasetError("no query has a relevant image among the indexed ones; nothing to evaluate")
    ap_all = np.concatenate(aps)
    n_rel_all = np.concatenate(counts)
    precision = {k: float((np.concatenate(hits[k]) / k).mean()) for k in ks}
    recall = {k: float((np.concatenate(hits[k]) / n_rel_all).mean()) for k in ks}
    ns = float(np.concatenate(ns_hits).mean()) if gt.ukbench else None
    return EvaluationReport(
        kind=gt.kind,
        n_images=n,
        n_queries=len(done),
        map=float(ap_all.mean()),
        precision=precision,
        recall=recall,
        ns_score=ns,
        per_class=_per_class(gt, done, ap_all, np.concatenate(p10) if p10 else None),
        per_query=dict(zip(done, ap_all.tolist())),
        skipped=skipped,
    )


def _ns_hits(searcher: Searcher, qvecs: np.ndarray, rows: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Per query, how many of its group's images (itself included) are in its top 4 (N-S protocol:
    the query stays in its own ranking, and in its query expansion if any)."""
    top = searcher.search(qvecs, NS_TOP)[0]
    return np.take_along_axis(rel, top, axis=1).sum(axis=1) + (top == rows[:, None]).any(axis=1)


def _per_class(gt: GroundTruth, queries: list[str], ap: np.ndarray, p10: np.ndarray | None) -> list[ClassRow]:
    if gt.labels is None:
        return []
    aps: dict[str, list[float]] = defaultdict(list)
    p10s: dict[str, list[float]] = defaultdict(list)
    for i, q in enumerate(queries):
        label = gt.labels.get(q)
        if label is None:
            continue
        aps[label].append(float(ap[i]))
        if p10 is not None:
            p10s[label].append(float(p10[i]))
    return [
        ClassRow(
            label=label,
            name=gt.class_names.get(label),
            n_queries=len(aps[label]),
            map=float(np.mean(aps[label])),
            p_at_10=float(np.mean(p10s[label])) if p10 is not None else None,
        )
        for label in sorted(aps, key=_natural)
    ]


def _natural(label: str) -> tuple[int, int | str]:
    """Numeric labels in numeric order (2 before 10), then the others alphabetically."""
    return (0, int(label)) if label.isdecimal() else (1, label)


def evaluate_index(
    snapshot: IndexReader,
    gt_path: str | None = None,
    *,
    reranking: Reranking = Reranking(),
    ks: Sequence[int] = (1, 5, 10, 20, 100),
) -> EvaluationReport:
    """Evaluate an opened index against its folder's ground truth (or the file ``gt_path``).

    The ranking is exact (AP needs every row ranked, which an approximate index cannot give), with
    ``reranking`` applied as for queries.
    """
    gt = load_ground_truth(Path(snapshot.root), list(snapshot.paths), path=gt_path)
    searcher = rerank(snapshot.searcher(exact=True), reranking)
    return evaluate(searcher, list(snapshot.paths), gt, ks=tuple(ks))
