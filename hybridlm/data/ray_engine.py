"""The curation stages on Ray: the same decisions as the local engine, computed over partitions of
the corpus by Ray tasks, the way NeMo Curator scales its pipeline.

    driver: read sources -> partitions of raw records (in input order, `partition_docs` each)
    map      (one task a partition): extract, quality filters, exact key, MinHash signature and
             decontamination verdict of every document         -> per-partition results in Ray's store
    shuffle 1 (exact dedup): the map tasks bucket (key, index) by hash(key) into R outputs; reducer r
             sees every document with a key of bucket r, whatever its partition, and names the
             duplicates (all but the earliest index)
    map 2    (band keys): each partition cuts its exact-dedup survivors' signatures into LSH bands
    shuffle 2 (near dedup): (band, band key) buckets go to reducer hash(band, key) % R, which lists the
             bucket's candidate pairs with the local engine's rule (minhash.bucket_pairs). So a pair
             of near duplicates in different partitions still meets: dedup is global, not per partition
    driver:  the candidate pairs are verified and clustered exactly as locally (minhash.cluster_pairs)
    driver:  each partition's texts, fetched as it completes (in order), go to the spill store
    tokenize: the mixed documents are encoded by tasks over chunks, a bounded number in flight

Split, mix and shard writing are the local engine's own code on the driver, so the output (kept
documents, shard bytes, manifest hash) is identical to `--engine local`. A worker that dies is
retried by Ray (tasks are pure functions of their inputs: max_retries), so a killed worker loses
and duplicates nothing.

Memory: at most 2 partitions per CPU are in flight (raw records and texts in Ray's object store);
the driver holds one partition's texts at a time, writing them to the spill store as the local
engine does (streaming.py), and keeps its small records: a DocRef and a contamination verdict per
document, signatures spilled to disk as they arrive. What stays in Ray's store until the end are
the map tasks' small results (exact keys, signatures: ~0.6 KB a document), which Ray spills to
disk beyond `object_store_mb`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np

from .decontam import EvalNgrams
from .dedup import exact_key
from .documents import DataError, StageReport, log, merge_reports, progress
from .extract import extract
from .filters import quality_filter
from .minhash import MinHasher, bucket_pairs, lsh_bands
from .store import DocRef
from .streaming import SignatureRows, account, decontaminate, near_verdicts, partitions
from .tokenization import encode_documents


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster's address (ray://host:port or host:port); None starts a local Ray on 127.0.0.1
    workers: int | None = None  # CPUs of the local Ray started without an address (None: all)
    partition_docs: int = 2000  # raw records per map task
    reducers: int = 4  # shuffle partitions of each dedup stage
    max_retries: int = 3  # times Ray re-runs a task whose worker died
    object_store_mb: int | None = None  # object store of the local Ray started without an address, in MiB (None: Ray's default, 30% of RAM); Ray spills to disk beyond it
    kill_once: str | None = None  # fault injection for tests: a marker path; the first map task of partition 1 that finds it missing creates it and kills its own worker

    def __post_init__(self):
        if self.partition_docs < 1 or self.reducers < 1:
            raise DataError("--partition-docs and --reducers must be at least 1")
        if self.object_store_mb is not None and self.object_store_mb < 75:
            raise DataError(f"--object-store-mb must be at least 75 (Ray's minimum), got {self.object_store_mb}")
        if self.workers is not None and self.workers < 1:
            raise DataError(f"--ray-workers must be at least 1, got {self.workers}")


def _bucket(key: bytes, reducers: int) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % reducers


def _map_partition(index: int, records: list, config, reducers: int, decontam, kill_once):
    """Extract, filter, exact key, signature and contamination of one partition -> (results, then
    `reducers` exact-key buckets of (key, (partition, position in the partition's output)))."""
    if kill_once is not None and index == 1 and not os.path.exists(kill_once):
        Path(kill_once).touch()
        os._exit(1)  # the worker process dies mid-task; Ray must run this partition again
    docs, extract_report = extract(records)
    if config.filters is not None:
        docs, filter_report = quality_filter(docs, config.filters)
    else:
        filter_report = None
    keys = [exact_key(d.text) for d in docs] if config.exact_dedup else []
    hasher = MinHasher(config.near_dedup) if config.near_dedup is not None else None
    signatures = np.stack([hasher.signature(d.text) for d in docs]) if hasher and docs else None
    dirty = [decontam[0].shared(d.text) >= decontam[1] for d in docs] if decontam else [False] * len(docs)
    buckets = [[] for _ in range(reducers)]
    for i, key in enumerate(keys):
        buckets[_bucket(key, reducers)].append((key, (index, i)))  # tuples order as the corpus does
    result = SimpleNamespace(n=len(docs), sources=[d.source for d in docs], chars=[d.chars for d in docs],
                             extract=extract_report, filters=filter_report, signatures=signatures, contaminated=dirty)
    return (result, docs, *buckets)  # the texts apart: the driver fetches them only to store the kept ones


def _exact_reduce(*buckets) -> list[tuple[int, int]]:
    """(partition, position) of the documents that repeat an earlier document's exact key."""
    first: dict[bytes, tuple[int, int]] = {}
    for bucket in buckets:
        for key, i in bucket:
            first[key] = min(first.get(key, i), i)
    return [i for bucket in buckets for key, i in bucket if first[key] != i]


def _band_keys(result, positions: list[int], locals_: list[int], bands: int, rows: int, reducers: int):
    """The band buckets of a partition's surviving documents: `reducers` lists of (band, key, position)."""
    out = [[] for _ in range(reducers)]
    for position, i in zip(positions, locals_):
        sig = result.signatures[i]
        for band in range(bands):
            key = band.to_bytes(4, "little") + sig[band * rows:(band + 1) * rows].tobytes()
            out[_bucket(key, reducers)].append((key, position))
    return tuple(out) if reducers > 1 else out[0]


def _band_reduce(*buckets) -> list[tuple[int, int]]:
    members: dict[bytes, list[int]] = {}
    for bucket in buckets:
        for key, position in bucket:
            members.setdefault(key, []).append(position)
    return [pair for group in members.values() if len(group) > 1 for pair in bucket_pairs(group)]


def _encode(texts: list[str], tokenizer_json: str) -> list[np.ndarray]:
    from tokenizers import Tokenizer as Backend

    return encode_documents(texts, SimpleNamespace(backend=Backend.from_str(tokenizer_json)))


class RayEngine:
    """A connection to Ray (started here, or joined) for one `prepare`; use as a context manager."""

    def __init__(self, options: RayOptions, show: bool):
        self.options, self.show = options, show

    def __enter__(self) -> "RayEngine":
        try:
            import ray
        except ImportError:
            raise DataError("--engine ray needs Ray: pip install 'hybridlm[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if self.options.address is not None:
                ray.init(address=self.options.address, log_to_driver=False)
            else:  # a private local cluster, reachable only from this machine
                store = self.options.object_store_mb
                ray.init(num_cpus=self.options.workers, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", object_store_memory=store * 2**20 if store else None)
        remote = lambda f, **kw: ray.remote(max_retries=self.options.max_retries, **kw)(f)  # noqa: E731
        self.map_partition = remote(_map_partition, num_returns=2 + self.options.reducers)
        self.exact_reduce = remote(_exact_reduce)
        self.band_keys = remote(_band_keys, num_returns=self.options.reducers)
        self.band_reduce = remote(_band_reduce)
        self.encode = remote(_encode)
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()

    # -- curation -------------------------------------------------------------------------------
    def curate(self, config, records: Iterator, store) -> tuple[list[DocRef], list[StageReport]]:
        """The local `curate` (extract -> filters -> exact -> near -> decontaminate) on Ray: every
        extracted and filtered text goes to `store` as its partition completes; -> the kept
        documents' refs in corpus order, and the stage reports."""
        ray, opts = self.ray, self.options
        index = EvalNgrams.from_files(config.decontam.files, config.decontam.n) if config.decontam.files else None
        decontam = ray.put((index, config.decontam.min_shared)) if index is not None and index.hashes.size else None
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        with tempfile.TemporaryDirectory(prefix="hybridlm-signatures-") as tmp:
            num_perm = config.near_dedup.num_perm if config.near_dedup is not None else 1
            signatures = SignatureRows(Path(tmp) / "signatures.u32", num_perm)
            refs, counts, dirty, extracts, filters, maps = [], [], bytearray(), [], [], []

            def collect(m) -> None:  # one partition's results, in corpus order; its texts into the store
                res = ray.get(m[0])
                refs.extend(store.append(d) for d in ray.get(m[1]))
                m[1] = None  # the texts leave Ray's object store
                counts.append(res.n)
                dirty.extend(bytes(res.contaminated))
                extracts.append(res.extract)
                filters.append(res.filters)
                if res.signatures is not None:
                    signatures.append(res.signatures)

            # a bounded number of partitions in flight: the raw records wait in the reader, not in Ray
            for i, batch in enumerate(progress(partitions(records, opts.partition_docs), "ray map", self.show,
                                               unit="part")):
                maps.append(self.map_partition.remote(i, batch, config, opts.reducers, decontam, opts.kill_once))
                if len(maps) - len(counts) > window:
                    collect(maps[len(counts)])
            for m in maps[len(counts):]:
                collect(m)
            offsets = np.cumsum([0] + counts).tolist()  # global positions in the extract+filter output
            reports = [merge_reports(extracts, "extract")]
            if config.filters is not None:
                reports.append(merge_reports(filters, "filters"))
            alive = np.ones(len(refs), dtype=bool)
            if config.exact_dedup:
                alive[self._exact(maps, offsets)] = False
                reports.append(account("exact_dedup", refs, alive, np.ones(len(refs), bool), "exact_duplicate"))
            if config.near_dedup is not None:
                before = alive.copy()
                keep, info = near_verdicts(None, signatures, before, config.near_dedup,
                                           self._near_pairs(config, maps, counts, offsets, before))
                alive &= keep
                reports.append(account("near_dedup", refs, alive, before, "near_duplicate"))
                reports[-1].info = info
            if index is not None:
                reports.append(decontaminate(refs, alive, dirty, index))
            signatures.close()
        for report in reports:
            log(report.summary(), self.show)
        return [r for r, a in zip(refs, alive) if a], reports

    def _exact(self, maps, offsets) -> list[int]:
        """Positions (in the extract+filter output) of exact duplicates, through shuffle 1."""
        ray, r = self.ray, self.options.reducers
        reduced = ray.get([self.exact_reduce.remote(*[m[2 + b] for m in maps]) for b in range(r)])
        return sorted(offsets[k] + i for part in reduced for k, i in part)

    def _near_pairs(self, config, maps, counts, offsets, before: np.ndarray) -> set[tuple[int, int]]:
        """Candidate pairs (positions among the exact-dedup survivors), through shuffle 2."""
        ray, r = self.ray, self.options.reducers
        bands, rows = lsh_bands(config.near_dedup.threshold, config.near_dedup.num_perm)
        position = np.cumsum(before) - 1  # global index -> its position among the survivors
        shuffled = []
        for k, n in enumerate(counts):
            locals_ = [i for i in range(n) if before[offsets[k] + i]]
            positions = [int(position[offsets[k] + i]) for i in locals_]
            refs = self.band_keys.remote(maps[k][0], positions, locals_, bands, rows, r)  # the result stays in Ray's store
            shuffled.append(refs if r > 1 else [refs])
        return {tuple(p) for part in ray.get([self.band_reduce.remote(*[s[b] for s in shuffled]) for b in range(r)])
                for p in part}

    # -- tokenization ---------------------------------------------------------------------------
    def encode_batches(self, batches: Iterator, tokenizer) -> Iterator:
        """(indices, texts) batches -> (indices, id arrays), in order, encoded by tasks; at most two
        tasks per CPU in flight, so the texts on their way stay bounded."""
        ray = self.ray
        tok = ray.put(tokenizer.backend.to_str())
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: list = []
        for indices, texts in batches:
            pending.append((indices, self.encode.remote(texts, tok)))
            if len(pending) >= window:
                indices, ref = pending.pop(0)
                yield indices, ray.get(ref)
        for indices, ref in pending:
            yield indices, ray.get(ref)
