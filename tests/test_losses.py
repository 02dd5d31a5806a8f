"""The KD objectives: values against hand computation, and the errors users meet."""
import math

import pytest
import torch
import torch.nn.functional as F

import reference_losses as ref
from kdtp.losses import AttentionTransferLoss, FeatureLoss, KDLoss, RelationLoss, attention_map, kd_kl_term
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


# --- the teacher gets no gradient through any loss --------------------------------------

def _logit_pair():
    return torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))


_TEACHER_CASES = {
    "KDLoss": lambda s, t, y: KDLoss(4.0, 0.5)(s, t, y),
    "KDLoss.terms kd": lambda s, t, y: KDLoss(4.0, 0.5).terms(s, t, y)["kd"],
    "kd_kl_term": lambda s, t, y: kd_kl_term(s, t, 4.0),
}


@pytest.mark.parametrize("name", sorted(_TEACHER_CASES))
def test_logit_losses_give_the_teacher_no_gradient(name):
    torch.manual_seed(2)
    s, t, y = _logit_pair()
    s.requires_grad_(), t.requires_grad_()
    _TEACHER_CASES[name](s, t, y).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["FeatureLoss", "AttentionTransferLoss", "RelationLoss",
                                  "RelationLoss.terms distance", "RelationLoss.terms angle"])
def test_feature_and_relation_losses_give_the_teacher_no_gradient(name):
    torch.manual_seed(3)
    if name == "FeatureLoss":
        s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)
        loss_fn = FeatureLoss(make_adapter(8, 16))
    elif name == "AttentionTransferLoss":
        s, t = torch.randn(3, 8, 4, 4), torch.randn(3, 16, 4, 4)
        loss_fn = AttentionTransferLoss()
    else:
        s, t = torch.randn(30, 5), torch.randn(30, 7)
        key = {"RelationLoss": None, "RelationLoss.terms distance": "rkd_distance",
               "RelationLoss.terms angle": "rkd_angle"}[name]
        loss_fn = RelationLoss() if key is None else (lambda a, b, k=key: RelationLoss().terms(a, b)[k])
    s.requires_grad_(), t.requires_grad_()
    loss_fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


# --- errors that name the argument --------------------------------------------------------

@pytest.mark.parametrize("T", [math.inf, -math.inf, math.nan])
def test_temperature_must_be_finite(T):
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        KDLoss(temperature=T)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        kd_kl_term(torch.randn(2, 3), torch.randn(2, 3), T)
    with pytest.raises(ValueError, match="T=0"):
        kd_kl_term(torch.randn(2, 3), torch.randn(2, 3), 0)


def test_kd_kl_term_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 5\)"):
        kd_kl_term(torch.randn(4, 10), torch.randn(4, 5), 2.0)


def _spoil(x, which, value):
    x = x.clone()
    x.view(-1)[which] = value
    return x


_INPUT_CASES = {
    # name -> (the loss as a function of its inputs, index of the argument to spoil, its name)
    "KDLoss student": (lambda s, t, y: KDLoss()(s, t, y), 0, "student_logits"),
    "KDLoss teacher": (lambda s, t, y: KDLoss()(s, t, y), 1, "teacher_logits"),
    "kd_kl_term student": (lambda s, t, y: kd_kl_term(s, t, 2.0), 0, "student_logits"),
    "kd_kl_term teacher": (lambda s, t, y: kd_kl_term(s, t, 2.0), 1, "teacher_logits"),
    "FeatureLoss student": (lambda s, t: FeatureLoss(make_adapter(4, 6))(s, t), 0, "student_map"),
    "FeatureLoss teacher": (lambda s, t: FeatureLoss(make_adapter(4, 6))(s, t), 1, "teacher_map"),
    "AttentionTransferLoss student": (lambda s, t: AttentionTransferLoss()(s, t), 0, "student_map"),
    "AttentionTransferLoss teacher": (lambda s, t: AttentionTransferLoss()(s, t), 1, "teacher_map"),
    "RelationLoss student": (lambda s, t: RelationLoss()(s, t), 0, "student_emb"),
    "RelationLoss teacher": (lambda s, t: RelationLoss()(s, t), 1, "teacher_emb"),
}


def _inputs_for(name):
    if name.startswith(("KDLoss", "kd_kl_term")):
        return [torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))]
    if name.startswith(("FeatureLoss", "AttentionTransferLoss")):
        return [torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)]
    return [torch.randn(5, 3), torch.randn(5, 4)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", sorted(_INPUT_CASES))
def test_non_finite_inputs_are_named(name, value):
    fn, which, arg = _INPUT_CASES[name]
    args = _inputs_for(name)
    args[which] = _spoil(args[which], 1, value)
    with pytest.raises(ValueError, match=rf"^{arg} .*NaN or inf.*check the inputs"):
        fn(*args)


@pytest.mark.parametrize("labels, needle", [
    (torch.tensor([0, 1, 2, 10]), r"\[0, 10\).*from 0 to 10"),
    (torch.tensor([0, -1, 2, 3]), r"\[0, 10\).*from -1 to 3"),
    (torch.tensor([-100, 1, 2, 3]), r"\[0, 10\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"integer class indices.*torch\.float32"),
    (torch.tensor([True, False, True, False]), r"integer class indices.*torch\.bool"),
])
def test_bad_labels_are_named(labels, needle):
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match="^labels must be .*" + needle):
        KDLoss()(s, t, labels)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_labels_of_any_integer_dtype_work(dtype):
    torch.manual_seed(4)
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    assert KDLoss(2.0, 0.3)(s, t, y.to(dtype)).item() == pytest.approx(KDLoss(2.0, 0.3)(s, t, y).item(), rel=1e-7)


@pytest.mark.parametrize("teacher_batch", [3, 1, 5])
def test_attention_transfer_names_a_batch_mismatch(teacher_batch):
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(4, 8, 4, 4\).*\(%d, 16, 4, 4\)" % teacher_batch):
        AttentionTransferLoss()(torch.randn(4, 8, 4, 4), torch.randn(teacher_batch, 16, 4, 4))


def test_relation_loss_needs_two_examples_and_sane_weights():
    with pytest.raises(ValueError, match="at least 2, got 1"):
        RelationLoss()(torch.randn(1, 5), torch.randn(1, 5))
    for kwargs, needle in [(dict(distance_weight=-1.0), "distance_weight=-1.0"),
                           (dict(angle_weight=math.inf), "angle_weight=inf"),
                           (dict(angle_weight=math.nan), "angle_weight=nan"),
                           (dict(distance_weight=0.0, angle_weight=0.0), "both 0")]:
        with pytest.raises(ValueError, match=needle):
            RelationLoss(**kwargs)


# --- values and gradients against references written from the papers ---------------------

def _grad(fn, x):
    x = x.detach().clone().requires_grad_()
    value = fn(x)
    (g,) = torch.autograd.grad(value, x)
    return value.detach(), g


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_kd_loss_matches_the_formula_in_value_and_gradient(label_smoothing):
    torch.manual_seed(5)
    s, t = torch.randn(16, 10, dtype=torch.float64) * 3, torch.randn(16, 10, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,))
    T, alpha = 3.0, 0.3
    kit = KDLoss(T, alpha, label_smoothing)
    v_kit, g_kit = _grad(lambda x: kit(x, t, y), s)
    v_ref, g_ref = _grad(lambda x: ref.kd_loss(x, t, y, T, alpha, label_smoothing), s)
    assert v_kit.dtype == torch.float64
    torch.testing.assert_close(v_kit, v_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_kit, g_ref, rtol=1e-9, atol=1e-13)
    # float32 inputs: the same value to float32 precision
    v32 = kit(s.float(), t.float(), y)
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(v_ref.item(), rel=1e-5)


def test_attention_map_channel_mean_is_the_papers_channel_sum_after_normalisation():
    torch.manual_seed(6)
    f = torch.randn(3, 7, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(attention_map(f), ref.attention(f), rtol=1e-12, atol=1e-15)
    unnormalised_mean = f.pow(2).mean(1).flatten(1)
    unnormalised_sum = f.pow(2).sum(1).flatten(1)
    torch.testing.assert_close(unnormalised_sum, 7 * unnormalised_mean)  # they differ by C only


def test_attention_transfer_matches_the_authors_definition_in_value_and_gradient():
    torch.manual_seed(7)
    s, t = torch.randn(4, 8, 6, 6, dtype=torch.float64), torch.randn(4, 16, 6, 6, dtype=torch.float64)
    v_kit, g_kit = _grad(lambda x: AttentionTransferLoss()(x, t), s)
    v_ref, g_ref = _grad(lambda x: ref.at_loss(x, t), s)
    assert v_kit.dtype == torch.float64
    torch.testing.assert_close(v_kit, v_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_kit, g_ref, rtol=1e-9, atol=1e-15)
    assert AttentionTransferLoss()(s.float(), t.float()).item() == pytest.approx(v_ref.item(), rel=1e-5)


def test_relation_loss_matches_the_paper_at_batch_64():
    """Over cdist's 25-row threshold, where its matrix-product shortcut was ~1% off."""
    torch.manual_seed(8)
    s, t = torch.randn(64, 6) * 4 + 10, torch.randn(64, 9) * 2 - 3   # off-centre: cancellation-prone
    d_ref, a_ref = ref.rkd_terms(s.double(), t.double())
    terms = RelationLoss().terms(s, t)
    assert set(terms) == {"rkd_distance", "rkd_angle"}
    assert terms["rkd_distance"].item() == pytest.approx(1.0 * d_ref.item(), rel=1e-5)
    assert terms["rkd_angle"].item() == pytest.approx(2.0 * a_ref.item(), rel=1e-5)
    assert RelationLoss()(s, t).item() == pytest.approx((d_ref + 2.0 * a_ref).item(), rel=1e-5)
    assert RelationLoss(distance_weight=25, angle_weight=50)(s, t).item() == pytest.approx(
        (25 * d_ref + 50 * a_ref).item(), rel=1e-5)
    only_distance = RelationLoss(distance_weight=1.0, angle_weight=0.0).terms(s, t)
    assert only_distance["rkd_angle"].item() == 0.0
    assert only_distance["rkd_distance"].item() == pytest.approx(d_ref.item(), rel=1e-5)


def _rkd_reference(x, t, distance_weight, angle_weight):
    d, a = ref.rkd_terms(x, t)
    return distance_weight * d + angle_weight * a


def test_relation_loss_gradient_matches_the_paper():
    torch.manual_seed(9)
    s, t = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 8, dtype=torch.float64)
    kit = RelationLoss(distance_weight=1.0, angle_weight=2.0)
    v_kit, g_kit = _grad(lambda x: kit(x, t), s)
    v_ref, g_ref = _grad(lambda x: _rkd_reference(x, t, 1.0, 2.0), s)
    assert v_kit.dtype == torch.float64
    torch.testing.assert_close(v_kit, v_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_kit, g_ref, rtol=1e-8, atol=1e-14)


def test_relation_loss_huber_switches_to_linear_for_large_differences():
    """Both branches of the Huber loss: a teacher with one far outlier puts some normalised
    distance differences beyond 1."""
    torch.manual_seed(10)
    s = torch.randn(12, 4, dtype=torch.float64)
    t = torch.randn(12, 4, dtype=torch.float64)
    t[0] += 40.0

    def psi_d(x):  # distance / mean distance over the 12 * 11 pairs i != j
        d = ((x[:, None] - x[None]) ** 2).sum(-1).sqrt()
        return d / (d.sum() / 132)
    gap = (psi_d(s) - psi_d(t)).abs()
    assert (gap > 1).any() and (gap[gap > 0] < 1).any()   # both branches are used
    v_kit, g_kit = _grad(lambda x: RelationLoss()(x, t), s)
    v_ref, g_ref = _grad(lambda x: _rkd_reference(x, t, 1.0, 2.0), s)
    torch.testing.assert_close(v_kit, v_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_kit, g_ref, rtol=1e-8, atol=1e-14)


def test_losses_pass_gradcheck_in_float64():
    torch.manual_seed(11)
    t_logits, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 3, 1])
    t_map, t_emb = torch.randn(2, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    checks = [
        (lambda x: KDLoss(2.0, 0.4, 0.1)(x, t_logits, y), torch.randn(3, 4, dtype=torch.float64)),
        (lambda x: AttentionTransferLoss()(x, t_map), torch.randn(2, 2, 2, 2, dtype=torch.float64)),
        (lambda x: RelationLoss()(x, t_emb), torch.randn(5, 2, dtype=torch.float64)),
    ]
    for fn, x in checks:
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(),))


def test_value_checks_can_be_switched_off_for_gpu_tensors_only():
    """The kit's loop skips the syncing value checks on a GPU; CPU tensors are always checked."""
    from kdtp.losses import KDLoss, value_checks_on_accelerators
    bad = torch.full((2, 10), float("nan"))
    with value_checks_on_accelerators(False):
        with pytest.raises(ValueError, match="student_logits"):
            KDLoss()(bad, torch.zeros(2, 10), torch.zeros(2, dtype=torch.long))
