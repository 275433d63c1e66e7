"""The curation stages on Ray: the same decisions as the local engine, computed over partitions of
the corpus by Ray tasks, the way NeMo Curator scales its pipeline.

    driver: read sources -> partitions of raw records (in input order, `partition_docs` each)
    map      (one task a partition): extract, quality filters, then per document its exact key,
             MinHash signature, LSH band keys (minhash.band_keys, as the local engine) and
             decontamination verdict; the keys leave the task already cut into R shuffle parts
    driver:  each partition's results and texts, fetched as it completes (in order): the texts go to
             the spill store, the signatures to a spill file, both then leave Ray's store
    shuffle 1 (exact dedup): reducer r gets every partition's part r of the exact keys (a key's part
             is picked by its bytes) and names the duplicates (all but the earliest, in corpus order)
    shuffle 2 (near dedup): reducer r gets every partition's part r of the (band, band key) pairs,
             drops the documents exact dedup removed and lists each LSH bucket's candidate pairs with
             the local engine's rule (minhash.bucket_pairs). So near duplicates in different
             partitions still meet: dedup is global, not per partition
    driver:  the candidate pairs are verified on the spilled signatures and clustered exactly as
             locally (minhash.cluster_pairs)
    tokenize: the mixed documents are encoded in chunks by encoder actors (one a CPU, each holding
             the tokenizer), a bounded number of chunks in flight

Split, mix and shard writing are the local engine's own code on the driver, so the output (kept
documents, shard bytes, manifest hash) is identical to `--engine local`. A worker that dies is
retried by Ray (tasks are pure functions of their inputs: max_retries; an encoder actor is
restarted and its calls re-run), so a killed worker loses and duplicates nothing.

Memory: at most 2 partitions per CPU are in flight (raw records and texts in Ray's object store);
the driver holds one partition's texts at a time and keeps the local engine's small records (a
DocRef and a contamination verdict per document; signatures spilled to disk as they arrive). What
stays in Ray's store until the shuffles are the key parts, numpy arrays of about 20 + 14 x bands
bytes a document (~150 B with the default 9 bands), which Ray spills to disk beyond `object_store_mb`.
"""

from __future__ import annotations

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
from .minhash import MinHasher, band_keys, bucket_pairs, lsh_bands
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
    # fault injection for tests: a marker path P; the first map task of partition 1 that finds P missing
    # creates it and kills its own worker, and the encoder given the first chunk does the same with P.encode
    kill_once: str | None = None

    def __post_init__(self):
        if self.partition_docs < 1 or self.reducers < 1:
            raise DataError("--partition-docs and --reducers must be at least 1")
        if self.object_store_mb is not None and self.object_store_mb < 75:
            raise DataError(f"--object-store-mb must be at least 75 (Ray's minimum), got {self.object_store_mb}")
        if self.workers is not None and self.workers < 1:
            raise DataError(f"--ray-workers must be at least 1, got {self.workers}")


def _exact_parts(keys: np.ndarray, reducers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(n,) 16-byte exact keys of a partition -> `reducers` parts (keys, positions in the partition),
    the part of a key picked by its first 8 bytes (the keys are digests: uniform)."""
    bucket = np.frombuffer(keys.tobytes(), dtype=np.uint64)[::2] % reducers
    return [(keys[bucket == r], np.flatnonzero(bucket == r).astype(np.int32)) for r in range(reducers)]


def _band_parts(keys: np.ndarray, reducers: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(n, bands) uint64 LSH band keys of a partition -> `reducers` parts (band, key, position in the
    partition), the part of a bucket picked by its key."""
    n, bands = keys.shape
    band = np.tile(np.arange(bands, dtype=np.uint16), n)
    position = np.repeat(np.arange(n, dtype=np.int32), bands)
    flat = keys.ravel()
    bucket = flat % reducers
    return [(band[bucket == r], flat[bucket == r], position[bucket == r]) for r in range(reducers)]


def _die_once(marker: str | None) -> None:
    """Fault injection (RayOptions.kill_once): the first worker to get here without `marker` dies."""
    if marker is not None and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # the worker process dies mid-task; Ray must run its work again


def _map_partition(index: int, records: list, config, reducers: int, decontam, kill_once):
    """Extract, filter, exact key, signature, LSH band keys and contamination of one partition ->
    (results, texts, then `reducers` exact-key parts, then `reducers` band-key parts). The parts are
    numpy arrays (about 20 + 14 x bands bytes a document), what stays in Ray's store until the shuffles."""
    if index == 1:
        _die_once(kill_once)
    docs, extract_report = extract(records)
    if config.filters is not None:
        docs, filter_report = quality_filter(docs, config.filters)
    else:
        filter_report = None
    keys = np.array([exact_key(d.text) for d in docs] if config.exact_dedup else [], dtype="V16")
    signatures, bands = None, np.zeros((len(docs), 0), dtype=np.uint64)
    if config.near_dedup is not None and docs:
        hasher = MinHasher(config.near_dedup)
        signatures = np.stack([hasher.signature(d.text) for d in docs])
        bands = band_keys(signatures, *lsh_bands(config.near_dedup.threshold, config.near_dedup.num_perm))
    dirty = [decontam[0].shared(d.text) >= decontam[1] for d in docs] if decontam else [False] * len(docs)
    result = SimpleNamespace(n=len(docs), sources=[d.source for d in docs], chars=[d.chars for d in docs],
                             extract=extract_report, filters=filter_report, signatures=signatures, contaminated=dirty)
    # the texts apart: the driver fetches them only to store them
    return (result, docs, *_exact_parts(keys, reducers), *_band_parts(bands, reducers))


def _exact_reduce(*parts) -> tuple[np.ndarray, np.ndarray]:
    """Every partition's part of one exact-key bucket, in corpus order -> (partition, position) of the
    documents that repeat an earlier document's key."""
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    keys = np.concatenate([k for k, _ in parts])
    partition = np.concatenate([np.full(len(k), p, dtype=np.int32) for p, (k, _) in enumerate(parts)])
    position = np.concatenate([i for _, i in parts])
    duplicate = np.ones(len(keys), dtype=bool)
    duplicate[np.unique(keys, return_index=True)[1]] = False  # the first of each key stays (corpus order)
    return partition[duplicate], position[duplicate]


def _band_reduce(survivor: np.ndarray, offsets: np.ndarray, *parts) -> list[tuple[int, int]]:
    """Every partition's part of one band-key bucket -> the candidate pairs (positions among the exact
    dedup survivors; survivor[i] is document i's position, -1 for a removed one) of its LSH buckets,
    with the local engine's rule (minhash.bucket_pairs)."""
    if not parts:
        return []
    band = np.concatenate([b for b, _, _ in parts])
    key = np.concatenate([k for _, k, _ in parts])
    member = survivor[np.concatenate([offsets[p] + i for p, (_, _, i) in enumerate(parts)])]
    alive = member >= 0
    band, key, member = band[alive], key[alive], member[alive]
    order = np.lexsort((member, key, band))
    band, key, member = band[order], key[order], member[order]
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])])
    return [pair for lo, hi in zip(starts, np.r_[starts[1:], len(order)]) if hi - lo > 1
            for pair in bucket_pairs(member[lo:hi].tolist())]


class _Encoder:
    """A worker holding the tokenizer, built once: parsing the 1.5 MB tokenizer.json takes ~0.15 s,
    which per task cost as much as encoding the task's 512 documents."""

    def __init__(self, tokenizer_json: str, kill_once: str | None):
        from tokenizers import Tokenizer as Backend

        self.tokenizer = SimpleNamespace(backend=Backend.from_str(tokenizer_json))
        self.kill_once = kill_once + ".encode" if kill_once is not None else None

    def encode(self, chunk: int, texts: list[str]) -> list[np.ndarray]:
        if chunk == 0:
            _die_once(self.kill_once)
        return encode_documents(texts, self.tokenizer)


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
        self.map_partition = remote(_map_partition, num_returns=2 + 2 * self.options.reducers)
        # a reducer's worker exits when it is done: its sort of a whole bucket left ~170 MiB of heap
        # behind in each worker for the rest of a 2 GiB run
        self.exact_reduce = remote(_exact_reduce, max_calls=1)
        self.band_reduce = remote(_band_reduce, max_calls=1)
        # an encoder that dies is restarted and its calls run again (they are pure, as the tasks are)
        self.encoder = ray.remote(max_restarts=self.options.max_retries,
                                  max_task_retries=self.options.max_retries)(_Encoder)
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
                m[0] = m[1] = None  # signatures and texts leave Ray's object store; the shuffle parts stay
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
                                           self._near_pairs(maps, offsets, before))
                alive &= keep
                reports.append(account("near_dedup", refs, alive, before, "near_duplicate"))
                reports[-1].info = info
            if index is not None:
                reports.append(decontaminate(refs, alive, dirty, index))
            signatures.close()
        for report in reports:
            log(report.summary(), self.show)
        return [r for r, a in zip(refs, alive) if a], reports

    def _exact(self, maps, offsets) -> np.ndarray:
        """Positions (in the extract+filter output) of exact duplicates, through shuffle 1."""
        ray, r = self.ray, self.options.reducers
        reduced = ray.get([self.exact_reduce.remote(*[m[2 + b] for m in maps]) for b in range(r)])
        return np.sort(np.concatenate([np.asarray(offsets)[p] + i for p, i in reduced]))

    def _near_pairs(self, maps, offsets, before: np.ndarray) -> set[tuple[int, int]]:
        """Candidate pairs (positions among the exact-dedup survivors), through shuffle 2."""
        ray, r = self.ray, self.options.reducers
        survivor = ray.put(np.where(before, np.cumsum(before) - 1, -1))  # document -> position among the survivors
        offsets = ray.put(np.asarray(offsets[:-1], dtype=np.int64))
        parts = [self.band_reduce.remote(survivor, offsets, *[m[2 + r + b] for m in maps]) for b in range(r)]
        return {pair for part in ray.get(parts) for pair in part}

    # -- tokenization ---------------------------------------------------------------------------
    def encode_batches(self, batches: Iterator, tokenizer) -> Iterator:
        """(indices, texts) batches -> (indices, id arrays), in order, encoded by one encoder actor per
        CPU; at most two batches per CPU in flight, so the texts on their way stay bounded."""
        ray = self.ray
        tok = ray.put(tokenizer.backend.to_str())
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        encoders = [self.encoder.remote(tok, self.options.kill_once) for _ in range(cpus)]
        pending: list = []
        for i, (indices, texts) in enumerate(batches):
            pending.append((indices, encoders[i % cpus].encode.remote(i, texts)))
            if len(pending) >= 2 * cpus:
                indices, ref = pending.pop(0)
                yield indices, ray.get(ref)
        for indices, ref in pending:
            yield indices, ray.get(ref)
        for encoder in encoders:
            ray.kill(encoder)
