"""DPO: our loss and gradients equal TRL's DPOTrainer computation on the same tiny Llama and batch."""

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is in the test extra")  # noqa: E402
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hybridlm.checkpoints.hf import load_hf_checkpoint, state_dict_to_hf  # noqa: E402
from hybridlm.finetune.data import collate  # noqa: E402
from hybridlm.finetune.dpo import DPOConfig, DPOObjective, dpo_losses, frozen_copy  # noqa: E402
from hybridlm.finetune.lora import LoraConfig, apply_lora  # noqa: E402
from hybridlm.train.objectives import IGNORE  # noqa: E402

VOCAB, T, PROMPT = 160, 12, 5


@pytest.fixture(scope="module")
def policy_and_ref(tmp_path_factory):
    """(policy dir, reference dir): a tiny random Llama and a perturbed copy of it."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    ref = transformers.LlamaForCausalLM(cfg).float()
    ref_dir = tmp_path_factory.mktemp("ref")
    ref.save_pretrained(ref_dir)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    policy_dir = tmp_path_factory.mktemp("policy")
    ref.save_pretrained(policy_dir)
    return policy_dir, ref_dir


def _batch():
    """2 pairs: rows [chosen 0, chosen 1, rejected 0, rejected 1], completions after PROMPT tokens
    (the rejected completions of different lengths, for IPO's per-token normalisation)."""
    ids = torch.randint(3, VOCAB, (4, T), generator=torch.Generator().manual_seed(5))
    completion = torch.zeros_like(ids)
    completion[:, PROMPT:] = 1
    completion[3, T - 3:] = 0
    return ids, completion


def _trl_loss_and_grads(policy_dir, ref_dir, tmp_path, loss_type, smoothing, beta):
    from tokenizers import Tokenizer, models

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({str(i): i for i in range(VOCAB)}, unk_token="0")),
        pad_token="0", eos_token="2")
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).float()
    ref = transformers.AutoModelForCausalLM.from_pretrained(ref_dir).float()
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], label_smoothing=smoothing,
                         report_to=[], use_cpu=True, max_length=64, bf16=False)
    data = datasets.Dataset.from_list([{"prompt": "5 6", "chosen": "7", "rejected": "8"}])
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    ids, completion = _batch()
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                 "completion_mask": completion}, False)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("robust", 0.2), ("ipo", 0.0)])
def test_loss_and_gradients_match_trl(policy_and_ref, tmp_path, loss_type, smoothing):
    policy_dir, ref_dir = policy_and_ref
    expected_loss, expected_grads = _trl_loss_and_grads(policy_dir, ref_dir, tmp_path, loss_type, smoothing, 0.3)
    ours = load_hf_checkpoint(policy_dir).train()
    objective = DPOObjective(DPOConfig(beta=0.3, loss_type=loss_type, label_smoothing=smoothing),
                             reference=frozen_copy(load_hf_checkpoint(ref_dir)))
    ids, completion = _batch()
    targets = ids[:, 1:].masked_fill(completion[:, 1:] == 0, IGNORE)
    rows = [[(x.tolist(), y.tolist())] for x, y in zip(ids[:, :-1], targets)]
    loss = objective.loss(ours, collate(rows, 0, packed=False))
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, atol=1e-5, rtol=1e-5)
    assert abs(expected_loss.item() - 0.6931) > 1e-3 or loss_type == "ipo"  # policy != reference
    grads = state_dict_to_hf({n: p.grad for n, p in ours.named_parameters()}, ours.config, "llama")
    assert set(grads) == set(expected_grads)
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    assert set(objective.last_fields) == {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"}


def test_lora_reference_is_the_base_with_adapters_off(policy_and_ref):
    policy_dir, _ = policy_and_ref
    model = load_hf_checkpoint(policy_dir)
    frozen = frozen_copy(model)
    apply_lora(model, LoraConfig(r=2))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    ids, completion = _batch()
    targets = ids[:, 1:].masked_fill(completion[:, 1:] == 0, IGNORE)
    batch = collate([[(x.tolist(), y.tolist())] for x, y in zip(ids[:, :-1], targets)], 0, packed=False)
    cfg = DPOConfig(beta=0.5)
    torch.testing.assert_close(DPOObjective(cfg).loss(model, batch), DPOObjective(cfg, frozen).loss(model, batch))


def test_label_smoothing_zero_reduces_variants_to_dpo():
    pc, pr, rc, rr = (torch.randn(6) for _ in range(4))
    plain = dpo_losses(pc, pr, rc, rr, 0.2)
    torch.testing.assert_close(dpo_losses(pc, pr, rc, rr, 0.2, "robust", 0.0), plain)
    assert (dpo_losses(pc, pr, rc, rr, 0.2, "sigmoid", 0.1) != plain).all()
    with pytest.raises(ValueError, match="unknown DPO loss"):
        DPOConfig(loss_type="kto")
