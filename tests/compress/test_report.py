"""`compress report`: each variant is the library's own compression of the same weights, measured
with the shared perplexity scorer, and the command writes its three files or nothing."""

import pytest
import torch

from hybridlm.compress.report import ReportConfig, markdown_table, run_report, weight_bytes
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

SMALL = dict(eval_tokens=300, window=64, stride=32, calib_tokens=256, prompt_tokens=16, decode_tokens=4, decode_runs=1)


@pytest.fixture(scope="module")
def rows(tiny_llama_dir):
    from hybridlm.nn import packed_linear

    variants = ("float32", "w8-rtn", "w4-rtn-g32", "gguf-q8_0", "mlp-channels-25%", "drop-2-layers")
    # packing (chosen by a timing on fast machines) must not change what is counted as weights
    with pytest.MonkeyPatch.context() as mp:
        pack = packed_linear.pack_linears
        float_only = lambda model: not any(type(m).__name__ == "QuantLinear" for m in model.modules())
        mp.setattr(packed_linear, "pack_linears",
                   lambda model, impl="auto": pack(model, "packed" if float_only(model) else impl))
        report = run_report(ReportConfig(model=str(tiny_llama_dir), variants=variants, **SMALL))
    return {r.variant: r for r in report}


def test_bytes_fall_with_bits_and_pruning(rows):
    f32 = rows["float32"]
    assert rows["w4-rtn-g32"].weight_bytes < rows["w8-rtn"].weight_bytes < f32.weight_bytes
    assert rows["gguf-q8_0"].weight_bytes < f32.weight_bytes
    assert rows["mlp-channels-25%"].parameters < f32.parameters
    assert rows["drop-2-layers"].parameters < rows["mlp-channels-25%"].parameters  # llama-tiny has 2 layers
    assert all(r.decode_tokens_per_s > 0 and r.perplexity > 1 for r in rows.values())
    assert rows["w8-rtn"].act == "fast" and rows["float32"].act == "float"


def test_float_row_is_the_shared_scorer_on_the_loaded_model(rows, tiny_llama_dir):
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress.calibration import heldout_text
    from hybridlm.eval.perplexity import perplexity

    lm = load_model(tiny_llama_dir, dtype=torch.float32)
    ids = lm.tokenizer.encode(heldout_text())[:SMALL["eval_tokens"]]
    with torch.inference_mode():
        expected = perplexity(lm.model.eval(), ids, SMALL["window"], SMALL["stride"]).perplexity
    assert rows["float32"].perplexity == pytest.approx(expected, rel=1e-4)
    assert rows["float32"].weight_bytes == weight_bytes(lm.model)[0] == \
        sum(p.numel() * 4 for p in lm.model.parameters())  # float32, the tied tensor once
    # int8 weights move perplexity a little, not a lot
    assert rows["w8-rtn"].perplexity == pytest.approx(expected, rel=0.05)


def test_weight_bytes_count_a_tied_tensor_once():
    model = Decoder(get_preset("llama-tiny").replace(tie_embeddings=True))
    nbytes, values = weight_bytes(model)
    assert values == sum(p.numel() for p in model.parameters())  # parameters() lists a tied weight once
    assert nbytes == 4 * values


def test_table_lists_ratios_to_float(rows):
    table = markdown_table(list(rows.values()))
    assert table.splitlines()[2].startswith("| float32 |") and "| 1.000 |" in table.splitlines()[2]
