import pytest
import torch
from torch.nn import functional as F

from hybridlm.finetune.distill import DistillConfig, DistillObjective, Student, distill_kl, final_hidden
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset


def test_kl_is_t_squared_times_the_softened_kl():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    for temp in (1.0, 3.0):
        p, q = F.softmax(t / temp, -1), F.softmax(s / temp, -1)
        expected = (p * (p.log() - q.log())).sum(-1).mean() * temp ** 2
        torch.testing.assert_close(distill_kl(s, t, temp), expected)
    assert distill_kl(t, t, 2.0).abs() < 1e-6


def test_transformer_teacher_hybrid_student_all_terms_train():
    torch.manual_seed(0)
    teacher = Decoder(get_preset("llama-tiny", vocab_size=64, d_model=96, n_heads=4, n_kv_heads=2))
    student = Student(Decoder(get_preset("nemotron-h-tiny", vocab_size=64, d_model=64)), teacher_width=96)
    objective = DistillObjective(teacher, DistillConfig(temperature=2.0, alpha=0.7, hidden_weight=0.3))
    batch = torch.randint(0, 64, (2, 17))
    loss = objective.loss(student, batch)
    with torch.no_grad():
        logits, hidden = student(batch[:, :-1])
        with final_hidden(teacher) as got:
            t_logits = teacher(batch[:, :-1])
        expected = (0.3 * F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
                    + 0.7 * distill_kl(logits, t_logits, 2.0) + 0.3 * F.mse_loss(hidden, got["h"]))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert student.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    total, count = objective.eval_sums(student, batch)
    assert count == 32 and total / count == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item(), rel=1e-5)


def test_bad_settings():
    with pytest.raises(ValueError):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError):
        DistillConfig(temperature=0)
