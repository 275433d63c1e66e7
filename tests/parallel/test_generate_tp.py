"""`hybridlm generate --tp 2` under torchrun writes the tokens one process writes (a hybrid model: the
KV cache and the Mamba conv and SSM state are split by heads with the layers)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from hybridlm.models import build_model
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer
from hybridlm.train.export import export_hf


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    from pydoc_data.topics import topics

    out = tmp_path_factory.mktemp("hybrid") / "model"
    torch.manual_seed(0)
    model = build_model(get_preset("nemotron-h-tiny", d_model=64, d_ff=96))
    with torch.no_grad():  # larger weights than the init's: sharper logits, so a split rounding cannot flip a token
        for p in model.parameters():
            p.mul_(3.0)
    tok = Tokenizer.train_bpe(list(topics.values())[:200], vocab_size=400)
    assert export_hf(model, out, tok) is not None
    return out


def _generate(model_dir, *extra, nproc=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] \
        if nproc else [sys.executable]
    cmd = [*launcher, "-m", "hybridlm", "generate", str(model_dir), "The tensor", "--max-new-tokens", "12",
           "--temperature", "0", "--ignore-eos", "--dtype", "float32", "--linear", "ref", "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_generate_tp2_equals_one_process(hybrid_dir):
    (single,) = _generate(hybrid_dir)
    ranks = _generate(hybrid_dir, "--tp", "2", nproc=2)
    assert len(ranks) == 1 and len(single["token_ids"]) == 12  # rank 0 reports; rank 1 stays quiet
    assert ranks[0]["token_ids"] == single["token_ids"]
    assert ranks[0]["cache_bytes"] * 2 == pytest.approx(single["cache_bytes"], rel=0.01)  # each rank: half the cache


def test_generate_tp_needs_torchrun(hybrid_dir, capsys):
    from hybridlm.cli import main

    assert main(["generate", str(hybrid_dir), "x", "--tp", "2", "--max-new-tokens", "2"]) != 0
    assert "torchrun" in capsys.readouterr().err
