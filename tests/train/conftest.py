"""A tiny real dataset for the trainer tests: pydoc prose, a byte-level BPE trained on it, shards."""

from pathlib import Path

import numpy as np
import pytest


def build_dataset(out: Path, vocab_size: int = 320) -> Path:
    """Shards of pydoc's topics: all but the last 8 for training, those 8 for validation; the tokenizer
    is written beside them and named in the manifest."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from hybridlm.data.shards import write_manifest, write_split
    from hybridlm.tokenizer import Tokenizer

    names = sorted(topics)
    train_docs, val_docs = [topics[k] for k in names[:-8]], [topics[k] for k in names[-8:]]
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(train_docs, trainer)
    tok = Tokenizer(backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eos = tok.eos_token_ids[0]
    out.mkdir(parents=True, exist_ok=True)
    tok.to_hf_files(out)

    def encode(docs):
        return [np.array(tok.encode(d) + [eos]) for d in docs]

    splits = {"train": write_split(out, "train", encode(train_docs), tok.vocab_size),
              "val": write_split(out, "val", encode(val_docs), tok.vocab_size)}
    write_manifest(out, {"dtype": "uint16", "vocab_size": tok.vocab_size, "eos_token_id": eos,
                         "splits": splits, "tokenizer": "tokenizer.json"})
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("data") / "pydoc")


# a model small enough that a step takes milliseconds: what is tested is the bookkeeping
SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}


def _small_config(data: Path, out: Path, preset: str = "gpt2-tiny", **kw):
    from hybridlm.train import TrainConfig

    base = dict(preset=preset, data_dir=str(data), out_dir=str(out), model_overrides=dict(SMALL), max_steps=6,
                seq_len=32, micro_batch_size=2, global_batch_size=4, warmup_steps=2, lr=3e-3, eval_every=3,
                eval_sequences=8, save_every=3, progress=False, plot=False, peak_flops=1e11)
    base.update(kw)
    return TrainConfig(**base)


def _train_losses(run_dir: Path) -> dict[int, float]:
    from hybridlm.train import read_log

    return {e["step"]: e["loss"] for e in read_log(run_dir) if e["type"] == "train"}


@pytest.fixture
def small_config():
    """small_config(data, out, preset="gpt2-tiny", **TrainConfig fields) -> a quick TrainConfig."""
    return _small_config


@pytest.fixture
def train_losses():
    """train_losses(run_dir) -> {step: training loss} from its log.jsonl."""
    return _train_losses


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: a second OpenMP thread buys nothing and, on a busy two-core machine,
    spin-waiting on it made steps 100x slower. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
