"""Bringing an index up to date with its folder: plan, embed, commit; incremental and crash-safe.

New files are embedded, changed files (size or mtime) re-embedded, deleted files dropped, bad files
remembered and not retried until they change (:mod:`cbir.indexing.plan`). Progress is committed every
``checkpoint_every`` images or ``checkpoint_seconds`` seconds, so a crash loses at most the work
since the last checkpoint (Ctrl-C and ordinary errors lose nothing: the finished work is committed
before the exception goes on). The end of a run compacts the rows and refreshes the approximate
index (:meth:`cbir.stores.base.IndexWriter.finish`). An embedder whose workers can write rows
themselves (:class:`DirectEmbedder`, ``--ray``) does so when the store hands out a
sink (Milvus); the indexer then gets each file's outcome, not its vector, and commits as before.

With labels (``IndexOptions.labels``, or an index that has them: the setting is remembered) every
indexed image also gets its top ImageNet classes (:mod:`cbir.core.labels`): in the same decode pass
when the encoder classifies too (:class:`~cbir.encoders.classifier.JointEncoder`), else from the
classifier on its own; held rows without labels (an index labelled for the first time, or by
another classifier) are labelled without being embedded again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cbir.core.errors import BadImageError, DatasetError, IndexWriteError
from cbir.core.labels import Labels, top_labels
from cbir.core.progress import progress_bar
from cbir.core.records import Entry, Skipped
from cbir.core.types import JSONDict
from cbir.encoders.base import Encoder, EncoderSource, Result
from cbir.encoders.classifier import Both, ClassifierSource, JointEncoder, NetworkClassifier
from cbir.indexing.plan import Listing, Plan, make_plan, stat_files
from cbir.indexing.shard import Shard
from cbir.ingest.decode import capture_time
from cbir.ingest.files import find_images
from cbir.stores.base import IndexWriter, Store
from cbir.stores.folder.ann import ANN_MODES
from cbir.stores.folder.store import FolderStore
from cbir.stores.sink import RowSink, SinkResult, Written

log = logging.getLogger(__name__)
DTYPES = ("float32", "float16")


@runtime_checkable
class DirectEmbedder(Encoder, Protocol):
    """An encoder whose workers can write rows straight into a store (``--ray`` is one)."""

    @property
    def one_machine(self) -> bool:
        """True when every worker runs on this machine (a sink only it can reach will do)."""
        ...

    def embed_into(
        self,
        sink: RowSink,
        root: Path,
        entries: Sequence[Entry],
        progress: bool | None = ...,
        desc: str = ...,
    ) -> Iterator[SinkResult]:
        """Embed the files ``root / entry.path`` and write their rows through ``sink`` (with the
        entry's size and mtime: the plan's stat, so a file changed meanwhile is re-embedded next
        run); yield each entry's position with :class:`Written` or the reason it failed."""
        ...


@dataclass(frozen=True)
class IndexOptions:
    """The run-time knobs of an indexing run (none of them changes the features)."""

    rebuild: bool = False
    dtype: str = "float32"
    recursive: bool = True
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()
    follow_links: bool = False  # index symbolic links leaving the dataset (ingest/files.py)
    checkpoint_every: int = 500
    checkpoint_seconds: float = 120.0
    progress: bool | None = None
    ann: str = "auto"
    shard: Shard = Shard()
    labels: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        if self.ann not in ANN_MODES:
            raise ValueError(f"ann must be one of {ANN_MODES}")
        if self.checkpoint_every < 1 or self.checkpoint_seconds <= 0:
            raise ValueError("checkpoints need a positive interval")


@dataclass
class IndexReport:
    """What an indexing run did; printed as a summary and available as JSON."""

    dataset: str
    index_dir: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    transient: int = 0  # skipped files and folders that could not be read, looked at again next run
    known_bad: int = 0
    known_bad_files: list[dict[str, str]] = field(default_factory=list)
    """The remembered failures this run left alone (unchanged since they failed), with why."""
    total: int = 0
    rebuilt: str | None = None
    ann: str | None = None
    embedded: int = 0
    seconds: float = 0.0
    labels: str | None = None
    labelled: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> JSONDict:
        d = asdict(self)
        d["images_per_second"] = round(self.images_per_second, 2)
        return d


def update_index(
    root: str | os.PathLike[str],
    source: EncoderSource,
    *,
    index_dir: str | os.PathLike[str] | None = None,
    options: IndexOptions = IndexOptions(),
    store: Store | None = None,
    classifier: ClassifierSource | None = None,
) -> IndexReport:
    """Index ``root`` (or bring its index up to date) with the features of ``source``.

    The index goes to ``store`` (default: the folder store in ``index_dir``, by default
    ``ROOT/.cbir``). The model is built only when something needs embedding, so an up-to-date index
    costs one folder scan. An index built with other settings is rebuilt; ``options.rebuild``
    forces that. ``classifier``: what labels the images when ``options.labels`` asks for labels
    (default: :data:`~cbir.encoders.classifier.DEFAULT_CLASSIFIER`); an index that has labels keeps
    them up to date with the classifier that made them.
    """
    t0 = time.perf_counter()
    root = Path(root)
    home = store if store is not None else FolderStore(root, index_dir)
    listing = Listing()
    links: list[dict[str, str]] = []  # symbolic links leaving the dataset, skipped
    files = find_images(
        root,
        recursive=options.recursive,
        include_hidden=options.include_hidden,
        exclude=options.exclude,
        skip_dirs=home.own_folders,
        onerror=listing.unlisted,
        follow_links=options.follow_links,
        skipped=links,
    )
    if not files:
        raise DatasetError(f"no images found in {root}")
    files = [f for f in files if options.shard.owns(f)]
    report = IndexReport(dataset=str(root), index_dir=home.location, skipped=links)
    weights = source.weights
    writer = home.writer(
        source.config,
        dtype=options.dtype,
        rebuild=options.rebuild,
        whitening=source.whitening,
        weights_path=str(weights.path.resolve()) if weights.path is not None else None,
    )
    with options.shard.view(writer) as target:
        report.rebuilt = target.rebuilt
        stat_files(root, files, listing)
        plan = make_plan(listing.stats, target.held(), target.known_bad(), listing.failed, listing.unsure)
        _count(plan, report)
        target.drop(plan.dropped)
        _read_capture_times(root, target, options)
        skipped = list(plan.known_bad)
        labeller = _labeller(target, options, classifier)
        report.labels = labeller.name if labeller is not None else None
        if labeller is not None and target.labeller != labeller.name:
            target.put_labels(labeller.name, {})  # another classifier's labels are all made again
        if plan.todo or target.is_new:
            emb = source.embedder()
            if emb.config != source.config:
                raise ValueError("the embedder's settings differ from the index settings")
            target.set_dim(emb.dim)
        if plan.todo:
            _embed(root, target, plan, emb, skipped, report, options, labeller)
        else:
            target.set_skipped(skipped)
            if target.is_new or not target.unchanged_since_commit():
                target.commit()
        if labeller is not None:
            _label(root, target, labeller, report, options)
        report.ann = target.finish(options.ann)
        report.total = len(target.held())
    report.seconds = time.perf_counter() - t0
    return report


def _labeller(
    target: IndexWriter, options: IndexOptions, given: ClassifierSource | None
) -> ClassifierSource | None:
    """What labels this run's images: the given classifier when labels are asked for, else the
    index's own when it has labels (the setting is remembered), else nothing."""
    if options.labels:
        return given if given is not None else ClassifierSource()
    if target.labeller is None:
        return None
    if given is not None and given.name == target.labeller:
        return given
    return ClassifierSource(
        target.labeller, given.runtime if given is not None else ClassifierSource().runtime
    )


def _label(
    root: Path, target: IndexWriter, source: ClassifierSource, report: IndexReport, options: IndexOptions
) -> None:
    """Label the held rows that have no labels (from the classifier alone: no vector is made again),
    committing every so often; a file the classifier cannot read stays unlabelled, with a warning."""
    todo = sorted(set(target.held()) - target.labelled())
    if not todo:
        if not target.unchanged_since_commit():
            target.commit()
        return
    classifier = source.classifier()
    pending: dict[str, Labels] = {}
    last = time.monotonic()

    def checkpoint() -> None:
        nonlocal last
        target.put_labels(source.name, pending)
        pending.clear()
        target.commit()
        last = time.monotonic()

    try:
        for pos, result in classifier.classify_files(
            [root / p for p in todo], progress=options.progress, desc="labelling"
        ):
            if isinstance(result, BadImageError):
                log.warning("not labelled %s: %s", todo[pos], result)
                continue
            pending[todo[pos]] = top_labels(result)
            report.labelled += 1
            if (
                len(pending) >= options.checkpoint_every
                or time.monotonic() - last >= options.checkpoint_seconds
            ):
                checkpoint()
    except BaseException:
        if pending:
            try:
                checkpoint()
            except IndexWriteError as err:
                log.error("could not save the last labels: %s", err)
        raise
    checkpoint()


def _split(both: Iterator[Both], labels: dict[int, Labels]) -> Iterator[Result]:
    """A joint encoder's results as vectors, each image's labels put aside in ``labels``."""
    for pos, result in both:
        if isinstance(result, BadImageError):
            yield pos, result
        else:
            vector, probs = result
            labels[pos] = top_labels(probs)
            yield pos, vector


def _read_capture_times(root: Path, target: IndexWriter, options: IndexOptions) -> None:
    """Give held rows without a capture time (indexes of earlier releases) theirs: headers only."""
    missing = [e.path for e in target.held().values() if e.taken is None]
    if not missing:
        return
    taken: dict[str, str] = {}
    bar = progress_bar(total=len(missing), desc="capture times", unit="img", enabled=options.progress)
    try:
        for rel in missing:
            when = capture_time(root / rel)
            if when is not None:
                taken[rel] = when
            bar.update(1)
    finally:
        bar.close()
    target.set_taken(taken)


def _count(plan: Plan, report: IndexReport) -> None:
    report.added, report.updated = len(plan.new), len(plan.changed)
    report.removed, report.unchanged = len(plan.removed), plan.unchanged
    report.known_bad = len(plan.known_bad)
    report.known_bad_files = [{"path": s.path, "reason": s.reason} for s in plan.known_bad]
    report.transient = len(plan.unsure)
    for failure in plan.unreadable:
        log.warning("skipped %s: %s", failure["path"], failure["reason"])
        report.skipped.append(failure)


def _results(
    root: Path,
    store: IndexWriter,
    emb: Encoder,
    todo: Sequence[Entry],
    skipped: list[Skipped],
    progress: bool | None,
    labels: dict[int, Labels] | None = None,
    labeller: ClassifierSource | None = None,
) -> Iterator[tuple[int, np.ndarray | Written | BadImageError]]:
    """The embedder's results for ``todo``: rows written straight into the store by the embedder's
    workers when both can (only their outcomes come back), else vectors for the indexer to put;
    with ``labels``, a joint encoder of classifier ``labeller`` also labels them, in the same pass."""
    if isinstance(emb, DirectEmbedder):
        store.set_skipped(skipped)  # the sink's commit deletes the failures this run retries, first
        sink = store.sink(same_machine=emb.one_machine)
        if sink is not None:
            return emb.embed_into(sink, root, todo, progress=progress, desc="indexing")
    paths = [root / e.path for e in todo]
    joint = _joint(emb, labeller) if labels is not None else None
    if joint is not None and labels is not None:
        return _split(joint.embed_and_classify_files(paths, progress=progress, desc="indexing"), labels)
    return emb.embed_files(paths, progress=progress, desc="indexing")


def _joint(emb: Encoder, labeller: ClassifierSource | None) -> JointEncoder | None:
    """What embeds and labels in one decode: the encoder itself when it classifies with the
    labelling classifier (a backbone with its own head), else the classifier's network beside it
    when both can, else None (the classifier then decodes the files again)."""
    if labeller is None:
        return None
    if isinstance(emb, JointEncoder) and emb.classifier_name == labeller.name:
        return emb
    classifier = labeller.classifier()
    return classifier.beside(emb) if isinstance(classifier, NetworkClassifier) else None


def _settled(root: Path, entry: Entry, failure: BadImageError) -> BadImageError:
    """``failure`` as remembered: a content failure of a file that is gone or changed since the plan
    stat-ed it (a folder renamed away, a file still being written) becomes one that can pass, so the
    file is retried next run instead of being remembered as bad at a stat it no longer has."""
    if failure.transient:
        return failure
    try:
        st = os.stat(root / entry.path)
    except OSError as exc:
        return BadImageError(f"gone while it was read ({exc.strerror or exc})", transient=True)
    if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return BadImageError(f"changed while it was read ({failure})", transient=True)
    return failure


def _embed(
    root: Path,
    store: IndexWriter,
    plan: Plan,
    emb: Encoder,
    skipped: list[Skipped],
    report: IndexReport,
    options: IndexOptions,
    labeller: ClassifierSource | None = None,
) -> None:
    """Embed the plan's files into the store, committing a checkpoint every so often and on the way
    out; with a joint encoder of ``labeller``, their labels too."""
    todo = plan.todo
    made: dict[int, Labels] = {}  # labels a joint encoder gave, by position
    labelled: dict[str, Labels] = {}
    was_indexed = {e.path for e in plan.changed}
    vecs: list[np.ndarray] = []
    entries: list[Entry] = []
    adopted: list[Entry] = []  # rows the embedder's workers wrote themselves
    last = time.monotonic()

    def checkpoint() -> None:
        nonlocal last
        if vecs:
            store.put(list(entries), np.stack(vecs))
            vecs.clear()
            entries.clear()
        if labelled and labeller is not None:
            store.put_labels(labeller.name, labelled)
            labelled.clear()
        if adopted:
            store.adopt(list(adopted))
            adopted.clear()
        store.set_skipped(skipped)
        store.commit()
        last = time.monotonic()

    try:
        for pos, result in _results(root, store, emb, todo, skipped, options.progress, made, labeller):
            entry = todo[pos]
            if isinstance(result, BadImageError):
                result = _settled(root, entry, result)
                report.transient += result.transient
                log.warning("skipped %s: %s", entry.path, result)
                skipped.append(Skipped(entry.path, entry.size, entry.mtime_ns, str(result), result.transient))
                report.skipped.append({"path": entry.path, "reason": str(result)})
                # a file that was indexed and is now unreadable has lost its row: it counts as removed
                if entry.path in was_indexed:
                    report.updated -= 1
                    report.removed += 1
                else:
                    report.added -= 1
            elif isinstance(result, Written):
                adopted.append(dataclasses.replace(entry, taken=result.taken))
                report.embedded += 1
            else:
                vecs.append(result)
                entries.append(dataclasses.replace(entry, taken=capture_time(root / entry.path)))
                report.embedded += 1
                if pos in made:
                    labelled[entry.path] = made.pop(pos)
                    report.labelled += 1
            pending = len(vecs) + len(adopted)
            if pending >= options.checkpoint_every or time.monotonic() - last >= options.checkpoint_seconds:
                checkpoint()
        store.end_sink()  # every result is in, so every worker has returned: its rows may be published
    except BaseException as exc:
        try:
            checkpoint()  # keep the finished work, whatever stopped the run
        except IndexWriteError as err:
            if isinstance(exc, KeyboardInterrupt):
                raise err from exc  # the user must not be told the finished work was saved
            if not isinstance(exc, IndexWriteError):  # the same full disk needs no second line
                log.error("could not save the last checkpoint: %s", err)
        raise
    checkpoint()
