"""The KD objectives: values against hand computation, and the errors users meet."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdtp.losses import AttentionTransferLoss, FeatureLoss, KDLoss, RelationLoss
from kdtp.models import make_adapter


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computation():
    s = [2.0, 0.5, -1.0]
    t = [1.0, 3.0, 0.0]
    y = 1
    T, alpha = 2.0, 0.3
    ce = -math.log(_softmax(s)[y])
    p_t = _softmax([v / T for v in t])
    p_s = _softmax([v / T for v in s])
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected = alpha * ce + (1 - alpha) * T * T * kl

    loss = KDLoss(temperature=T, alpha=alpha)(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_batch_mean_and_terms():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    loss = KDLoss(4.0, 0.5)
    terms = loss.terms(s, t, y)
    assert set(terms) == {"ce", "kd"}
    assert loss(s, t, y).item() == pytest.approx((terms["ce"] + terms["kd"]).item(), rel=1e-6)
    per_sample = [KDLoss(4.0, 0.5)(s[i:i + 1], t[i:i + 1], y[i:i + 1]).item() for i in range(8)]
    assert loss(s, t, y).item() == pytest.approx(sum(per_sample) / 8, rel=1e-5)


def test_alpha_one_is_plain_cross_entropy_and_identical_logits_give_zero_kd():
    torch.manual_seed(1)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    assert KDLoss(3.0, 1.0)(s, t, y).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert KDLoss(3.0, 0.0)(s, s, y).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(temperature=0.0), "T=0.0"),
    (dict(temperature=-1.0), "T=-1.0"),
    (dict(alpha=1.5), "alpha=1.5"),
    (dict(alpha=-0.1), "alpha=-0.1"),
])
def test_bad_hyper_parameters_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        KDLoss(**kwargs)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        KDLoss()(torch.randn(4, 10), torch.randn(4, 100), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        KDLoss()(torch.randn(4, 10), torch.randn(4, 10), torch.zeros(3, dtype=torch.long))


def test_feature_loss_adapts_channels_and_pools_space():
    loss = FeatureLoss(make_adapter(512, 2048))
    value = loss(torch.randn(2, 512, 4, 4), torch.randn(2, 2048, 1, 1))
    assert value.dim() == 0 and value.item() > 0
    value.backward()
    assert loss.adapter[0].weight.grad is not None
    with pytest.raises(ValueError, match="2048"):
        FeatureLoss(make_adapter(512, 1024))(torch.randn(2, 512, 1, 1), torch.randn(2, 2048, 1, 1))


def test_attention_and_relation_losses_are_zero_for_identical_inputs():
    x = torch.randn(4, 8, 4, 4)
    assert AttentionTransferLoss()(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert AttentionTransferLoss()(x, torch.randn(4, 16, 2, 2)).item() > 0
    e = torch.randn(6, 5)
    assert RelationLoss()(e, e).item() == pytest.approx(0.0, abs=1e-7)
    assert RelationLoss()(e, torch.randn(6, 7)).item() > 0
