"""What each method's training step computes: the named loss terms of its paper or lab."""
import torch
import torch.nn.functional as F

from kdtp.distillers import FeatureKD, LogitKD
from kdtp.models import build_model


def _pair():
    torch.manual_seed(0)
    return build_model("cnn_tiny"), build_model("cnn_small")


def test_feature_kd_is_logit_kd_plus_the_hint():
    """The reference lab's feature KD: alpha*CE + (1-alpha)*T^2*KL + beta*MSE, three logged terms."""
    student, teacher = _pair()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    feat = FeatureKD(student, teacher, "cnn_tiny", "cnn_small", 32, feature_weight=0.7,
                     temperature=3.0, alpha=0.3)
    logits, terms = feat.training_step(x, y)
    assert set(terms) == {"ce", "kd", "feat"}
    t_logits = teacher(x)
    T = 3.0
    ce = F.cross_entropy(logits, y)
    kl = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
    assert torch.allclose(terms["ce"], 0.3 * ce, rtol=1e-5)
    assert torch.allclose(terms["kd"], 0.7 * kl, rtol=1e-4)
    assert terms["feat"].item() > 0
    logit_only = LogitKD(student, teacher, 3.0, 0.3)
    _, lterms = logit_only.training_step(x, y)
    assert torch.allclose(lterms["ce"] + lterms["kd"], terms["ce"] + terms["kd"], rtol=1e-5)


def test_feature_kd_gives_the_student_the_kl_gradient_too():
    student, teacher = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    feat = FeatureKD(student, teacher, "cnn_tiny", "cnn_small", 32, feature_weight=0.0, alpha=0.0)
    _, terms = feat.training_step(x, y)
    terms["kd"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
