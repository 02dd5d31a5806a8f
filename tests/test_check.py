"""kdtp.check: the reference passes, every known mistake gets its own message, nobody is blocked.

The wrong implementations below are written the way a student would write them (not taken
from kdtp.check's internal variants), so these tests show that the check recognises the
mistakes as they appear in real code.
"""
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdtp.check as check
from kdtp.losses import FeatureLoss, KDLoss
from kdtp.models import make_adapter


@pytest.fixture(autouse=True)
def _fresh_registry():
    check._LAST.clear()
    yield
    check._LAST.clear()


def _verdict(name, fn):
    return getattr(check, name)(fn, quiet=True)


# ------------------------------------------------------------------ references are correct

@pytest.mark.parametrize("name", check.NAMES)
def test_reference_passes_and_prints_once(name, capsys):
    v = getattr(check, name)(getattr(check, f"reference_{name}"))
    out = capsys.readouterr().out
    assert v.passed and v.status == "correct" and v.mistake is None
    assert out.count(f"{name}: correct") == 1 and out == v.message + "\n"
    assert "message" not in repr(v)  # a notebook echoing the verdict does not repeat the paragraph


def test_references_agree_with_the_kit():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    assert torch.allclose(check.reference_kd_loss(s, t, y, 3.0, 0.2), KDLoss(3.0, 0.2)(s, t, y), rtol=1e-5)
    assert torch.allclose(check.reference_softmax_t(s, 3.0), F.softmax(s / 3.0, dim=1))
    ours, kit = check.reference_adapter(4, 7), make_adapter(4, 7)
    kit.load_state_dict(ours.state_dict())  # same layers, same parameter names
    sm, tm = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 7, 4, 4, generator=g)
    assert torch.allclose(check.reference_feature_loss(sm, tm, ours), FeatureLoss(kit)(sm, tm), rtol=1e-5)


def test_the_kits_own_modules_pass():
    assert check.kd_loss(lambda s, t, y, T, a: KDLoss(T, a)(s, t, y), quiet=True).passed
    assert check.adapter(make_adapter, quiet=True).passed
    assert check.feature_loss(lambda s, t, a: FeatureLoss(a)(s, t), quiet=True).passed


def test_a_correct_student_version_written_differently_passes():
    def my_softmax_t(logits, T):
        z = logits / T
        e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
        return e / e.sum(dim=-1, keepdim=True)

    def my_kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.5):
        log_ps = torch.log_softmax(student_logits / T, dim=-1)
        log_pt = torch.log_softmax(teacher_logits / T, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
        return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * T * T * kl

    def my_feature_loss(student_map, teacher_map, adapter):  # pools before the adapter
        t = teacher_map.detach()
        h, w = min(student_map.shape[2], t.shape[2]), min(student_map.shape[3], t.shape[3])
        s = adapter(F.adaptive_avg_pool2d(student_map, (h, w)))
        return ((s - F.adaptive_avg_pool2d(t, (h, w))) ** 2).mean()

    class MyAdapter(nn.Module):
        def __init__(self, student_channels, teacher_channels):
            super().__init__()
            self.conv = nn.Conv2d(student_channels, teacher_channels, 1)

        def forward(self, x):
            return self.conv(x)

    assert _verdict("softmax_t", my_softmax_t).passed
    assert _verdict("kd_loss", my_kd_loss).passed
    assert _verdict("feature_loss", my_feature_loss).passed
    assert _verdict("adapter", MyAdapter).passed


# ------------------------------------------------------------------ softmax_t mistakes

SOFTMAX_MISTAKES = {
    "no_divide": (lambda z, T: F.softmax(z, dim=1), "forgot to divide the logits by T"),
    "multiplied": (lambda z, T: F.softmax(z * T, dim=1), "multiplied the logits by T instead of dividing"),
    "wrong_dim": (lambda z, T: F.softmax(z / T, dim=0), "softmax over the wrong dim"),
    "log_softmax": (lambda z, T: F.log_softmax(z / T, dim=1), "log-probabilities (log_softmax) instead"),
    "divided_after": (lambda z, T: torch.softmax(z, 1) / T, "divided the probabilities by T"),
    "not_normalised": (lambda z, T: (z / T).exp(), "not normalised"),
    "overflow": (lambda z, T: (z / T).exp() / (z / T).exp().sum(1, keepdim=True), "overflows on large logits"),
    "wrong_shape": (lambda z, T: F.softmax(z / T, dim=1).max(dim=1).values, "wrong shape"),
    "returned_none": (lambda z, T: None, "returned None"),
    "not_tensor": (lambda z, T: F.softmax(z / T, dim=1).tolist(), "not a tensor"),
    "differs": (lambda z, T: F.softmax(z / (T + 1), dim=1), "differs from the reference"),
}


@pytest.mark.parametrize("key", SOFTMAX_MISTAKES)
def test_softmax_mistakes_are_named(key):
    fn, phrase = SOFTMAX_MISTAKES[key]
    v = _verdict("softmax_t", fn)
    assert (v.passed, v.status, v.mistake) == (False, "mistake", key)
    assert phrase in v.message


# ------------------------------------------------------------------ kd_loss mistakes

def _kl(log_p, target, **kw):
    return F.kl_div(log_p, target, reduction=kw.pop("reduction", "batchmean"), **kw)


def _kd_no_t2(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * kl


def _kd_swapped(s, t, y, T, alpha):  # KL(p_s || p_t): the teacher's log-probs as input
    kl = F.kl_div(F.log_softmax(t / T, dim=1), F.softmax(s / T, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_probs(s, t, y, T, alpha):
    kl = F.kl_div(F.softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_mean(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="mean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_sum(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="sum")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_teacher_only(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_student_only(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T ** 2 * kl


def _kd_no_temperature(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * kl


def _soft(s, t, T):
    return F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T


KD_MISTAKES = {
    "no_T2": (_kd_no_t2, "the T^2 factor is missing"),
    "T_not_T2": (lambda s, t, y, T, a: a * F.cross_entropy(s, y) + (1 - a) * _soft(s, t, T) / T,
                 "multiplied the KL term by T instead of T^2"),
    "T2_divided": (lambda s, t, y, T, a: a * F.cross_entropy(s, y) + (1 - a) * _soft(s, t, T) / T ** 4,
                   "divided the KL term by T^2 instead of multiplying"),
    "kl_swapped": (_kd_swapped, "KL arguments are swapped"),
    "probs_not_log": (_kd_probs, "probabilities instead of log-probabilities"),
    "mean_reduction": (_kd_mean, 'reduction="mean" instead of "batchmean"'),
    "sum_reduction": (_kd_sum, 'reduction="sum" without dividing by the batch size'),
    "T_teacher_only": (_kd_teacher_only, "temperature is applied to the teacher only"),
    "T_student_only": (_kd_student_only, "temperature is applied to the student only"),
    "no_temperature": (_kd_no_temperature, "temperature is not used at all"),
    "alpha_swapped": (lambda s, t, y, T, a: a * _soft(s, t, T) + (1 - a) * F.cross_entropy(s, y),
                      "alpha is on the wrong term"),
    "no_alpha": (lambda s, t, y, T, a: F.cross_entropy(s, y) + _soft(s, t, T), "alpha weights are missing"),
    "ce_softened": (lambda s, t, y, T, a: a * F.cross_entropy(s / T, y) + (1 - a) * _soft(s, t, T),
                    "cross-entropy is computed on the softened logits"),
    "kd_subtracted": (lambda s, t, y, T, a: a * F.cross_entropy(s, y) - (1 - a) * _soft(s, t, T),
                      "KD term is subtracted"),
    "negated": (lambda s, t, y, T, a: -(a * F.cross_entropy(s, y) + (1 - a) * _soft(s, t, T)),
                "whole loss has the wrong sign"),
    "no_ce": (lambda s, t, y, T, a: (1 - a) * _soft(s, t, T), "cross-entropy term is missing"),
    "no_kd": (lambda s, t, y, T, a: a * F.cross_entropy(s, y), "KD term is missing"),
    "non_finite": (lambda s, t, y, T, a: F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1),
                                                 reduction="batchmean"), "NaN or inf"),
    "returned_none": (lambda s, t, y, T, a: None, "returned None"),
    "not_tensor": (lambda s, t, y, T, a: check.reference_kd_loss(s, t, y, T, a).item(), "did you call .item()"),
    "not_scalar": (lambda s, t, y, T, a: F.cross_entropy(s, y, reduction="none"), "one value per example"),
    "no_grad": (lambda s, t, y, T, a: torch.tensor(check.reference_kd_loss(s, t, y, T, a).item()),
                "has no gradient"),
    "differs": (lambda s, t, y, T, a: check.reference_kd_loss(s, t, y, T, a) + 0.01,
                "differs from the reference by"),
}


@pytest.mark.parametrize("key", KD_MISTAKES)
def test_kd_mistakes_are_named(key):
    fn, phrase = KD_MISTAKES[key]
    v = _verdict("kd_loss", fn)
    assert (v.passed, v.status, v.mistake) == (False, "mistake", key)
    assert phrase in v.message


def test_kd_messages_are_all_different():
    messages = [_verdict("kd_loss", fn).message for fn, _ in KD_MISTAKES.values()]
    assert len(set(messages)) == len(messages)


def test_kd_generic_difference_names_the_case():
    v = _verdict("kd_loss", KD_MISTAKES["differs"][0])
    assert "case 1 (batch=4, classes=5, T=2.0, alpha=0.3)" in v.message
    assert "kdtp.check.hint('kd_loss')" in v.message


# ------------------------------------------------------------------ adapter mistakes

class _Repeat(nn.Module):  # right shape, nothing to learn
    def __init__(self, cs, ct):
        super().__init__()
        self.ct = ct

    def forward(self, x):
        return x.mean(1, keepdim=True).expand(-1, self.ct, -1, -1)


ADAPTER_MISTAKES = {
    "channels_swapped": (lambda cs, ct: nn.Conv2d(ct, cs, 1), "channels are swapped"),
    "wrong_in": (lambda cs, ct: nn.Conv2d(512, ct, 1), "wrong number of input channels"),
    "wrong_out": (lambda cs, ct: nn.Sequential(nn.Conv2d(cs, 2048, 1), nn.BatchNorm2d(2048)),
                  "wrong number of output channels"),
    "kernel_not_1x1": (lambda cs, ct: nn.Conv2d(cs, ct, 3, padding=1), "kernel is not 1x1"),
    "spatial_changed": (lambda cs, ct: nn.Conv2d(cs, ct, 1, stride=2), "changes the spatial size"),
    "no_params": (_Repeat, "no trainable parameters"),
    "not_module": (lambda cs, ct: nn.Conv2d(cs, ct, 1)(torch.zeros(1, cs, 2, 2)), "not an nn.Module"),
    "returned_none": (lambda cs, ct: None, "returned None"),
}


@pytest.mark.parametrize("key", ADAPTER_MISTAKES)
def test_adapter_mistakes_are_named(key):
    fn, phrase = ADAPTER_MISTAKES[key]
    v = _verdict("adapter", fn)
    assert (v.passed, v.status, v.mistake) == (False, "mistake", key)
    assert phrase in v.message


def test_adapter_3x3_without_padding_is_named_as_the_kernel():
    v = _verdict("adapter", lambda cs, ct: nn.Conv2d(cs, ct, 3))
    assert v.mistake == "kernel_not_1x1"


# ------------------------------------------------------------------ feature_loss mistakes

def _pool(s, t):
    if s.shape[-2:] != t.shape[-2:]:
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
    return s, t


def _fl_not_detached(student_map, teacher_map, adapter):
    return F.mse_loss(*_pool(adapter(student_map), teacher_map))


def _fl_no_adapter(student_map, teacher_map, adapter):
    return F.mse_loss(*_pool(student_map, teacher_map.detach()))


def _fl_no_pooling(student_map, teacher_map, adapter):
    return F.mse_loss(adapter(student_map), teacher_map.detach())


def _fl(reduce, resize=_pool):
    def loss(student_map, teacher_map, adapter):
        return reduce(*resize(adapter(student_map), teacher_map.detach()))
    return loss


def _resize_interp(s, t):
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    return (F.interpolate(s, size=size, mode="bilinear", align_corners=False),
            F.interpolate(t, size=size, mode="bilinear", align_corners=False))


def _resize_max(s, t):
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    return F.adaptive_max_pool2d(s, size), F.adaptive_max_pool2d(t, size)


FEATURE_MISTAKES = {
    "adapter_not_applied": (_fl_no_adapter, "adapter is not applied"),
    "teacher_not_detached": (_fl_not_detached, "teacher's map is not detached"),
    "sum": (_fl(lambda s, t: ((s - t) ** 2).sum()), "sum instead of the mean"),
    "sum_over_batch": (_fl(lambda s, t: ((s - t) ** 2).sum() / s.shape[0]), "divided by the batch size only"),
    "channel_sum": (_fl(lambda s, t: ((s - t) ** 2).sum(1).mean()), "summed the squared differences over channels"),
    "l1": (_fl(lambda s, t: (s - t).abs().mean()), "absolute error (L1)"),
    "rmse": (_fl(lambda s, t: torch.sqrt(F.mse_loss(s, t))), "square root"),
    "max_pool": (_fl(F.mse_loss, _resize_max), "max-pooled instead of average-pooled"),
    "interpolate": (_fl(F.mse_loss, _resize_interp), "resized with F.interpolate"),
    "pooled_student_to_teacher": (_fl(F.mse_loss, lambda s, t: (F.adaptive_avg_pool2d(s, t.shape[-2:]), t)),
                                  "always pooled the student's map to the teacher's size"),
    "pooled_teacher_to_student": (_fl(F.mse_loss, lambda s, t: (s, F.adaptive_avg_pool2d(t, s.shape[-2:]))),
                                  "always pooled the teacher's map to the student's size"),
    "no_grad": (lambda s, t, a: torch.tensor(check.reference_feature_loss(s, t, a).item()), "has no gradient"),
    "not_scalar": (_fl(lambda s, t: ((s - t) ** 2).mean((1, 2, 3))), "one value per example"),
    "differs": (_fl(lambda s, t: F.mse_loss(s, t) * 1.01), "differs from the reference by"),
}


@pytest.mark.parametrize("key", FEATURE_MISTAKES)
def test_feature_mistakes_are_named(key):
    fn, phrase = FEATURE_MISTAKES[key]
    v = _verdict("feature_loss", fn)
    assert (v.passed, v.status, v.mistake) == (False, "mistake", key)
    assert phrase in v.message


def test_feature_no_pooling_is_an_error_that_says_pool():
    v = _verdict("feature_loss", _fl_no_pooling)
    assert (v.passed, v.status, v.mistake) == (False, "error", "no_pooling")
    assert "spatial sizes differ" in v.message and "adaptive_avg_pool2d" in v.message


def test_feature_adapter_not_applied_even_when_the_channels_do_not_match():
    def no_adapter_no_pool(student_map, teacher_map, adapter):  # raises: channels differ
        return F.mse_loss(student_map, teacher_map.detach())
    v = _verdict("feature_loss", no_adapter_no_pool)
    assert v.mistake == "adapter_not_applied"


# ------------------------------------------------------------------ not done yet, errors

def _todo(*args, **kwargs):
    raise NotImplementedError("TODO: your code here")


@pytest.mark.parametrize("name", check.NAMES)
def test_not_implemented_is_not_done_yet(name):
    v = _verdict(name, _todo)
    assert (v.passed, v.status, v.mistake) == (False, "not done yet", "not_done")
    assert "NotImplementedError" in v.message and f"kdtp.check.hint({name!r})" in v.message


@pytest.mark.parametrize("name", check.NAMES)
def test_exceptions_are_errors_naming_type_message_and_line(name):
    def broken(*args):
        return 1 / 0
    v = _verdict(name, broken)
    assert (v.passed, v.status, v.mistake) == (False, "error", "error")
    assert "ZeroDivisionError: division by zero" in v.message
    assert "`return 1 / 0`" in v.message and "Likely cause" in v.message


def test_error_causes_are_specific():
    v = _verdict("kd_loss", lambda s, t, y: s.sum())  # wrong signature
    assert v.status == "error"
    assert "the check calls kd_loss(student_logits, teacher_logits, labels, T, alpha)" in v.message

    def typo(logits, T):
        return F.sofmax(logits / T, dim=1)
    v = _verdict("softmax_t", typo)
    assert v.status == "error" and "AttributeError" in v.message and "spelling" in v.message

    def inplace(s, t, y, T, alpha):
        s /= T
        return s.sum()
    v = _verdict("kd_loss", inplace)
    assert v.status == "error" and "in-place" in v.message

    v = _verdict("softmax_t", lambda z, T: F.softmax(z / T, dim=2))
    assert v.status == "error" and "dim=" in v.message


def test_not_callable_is_an_error():
    v = _verdict("kd_loss", 3.0)
    assert (v.status, v.mistake) == ("error", "not_callable")


def test_checks_never_raise_on_odd_outputs():
    class Weird:
        shape = property(lambda self: 1 / 0)
    for name in check.NAMES:
        v = _verdict(name, lambda *a: Weird())
        assert not v.passed and v.status in ("mistake", "error")


def test_checks_are_deterministic():
    fn = KD_MISTAKES["differs"][0]
    assert _verdict("kd_loss", fn).message == _verdict("kd_loss", fn).message


# ------------------------------------------------------------------ use

def test_use_returns_the_students_function_when_correct(capsys):
    def my_kd(s, t, y, T=4.0, alpha=0.5):
        return check.reference_kd_loss(s, t, y, T, alpha)
    assert check.use("kd_loss", my_kd) is my_kd
    assert capsys.readouterr().out == "using your kd_loss\n"  # the silent check printed nothing


@pytest.mark.parametrize("fn", [_kd_swapped, _todo, lambda *a: 1 / 0, "not a function"])
def test_use_falls_back_to_the_kit_and_never_raises(fn, capsys):
    got = check.use("kd_loss", fn)
    assert got is check.reference_kd_loss
    assert capsys.readouterr().out.startswith("using the kit's kd_loss (yours is not correct yet")


def test_use_reuses_the_last_verdict_of_this_very_function(capsys):
    calls = []

    def my_softmax_t(logits, T):
        calls.append(1)
        return F.softmax(logits / T, dim=1)
    check.softmax_t(my_softmax_t)
    n = len(calls)
    assert check.use("softmax_t", my_softmax_t) is my_softmax_t
    assert len(calls) == n  # not run again

    def redefined(logits, T):  # a new function is checked anew
        return F.softmax(logits, dim=1)
    assert check.use("softmax_t", redefined) is check.reference_softmax_t


def test_use_with_the_kits_versions_and_for_every_exercise(capsys):
    assert check.use("adapter") is check.reference_adapter
    assert capsys.readouterr().out == "using the kit's adapter\n"
    assert check.use("adapter", make_adapter) is make_adapter
    assert check.use("feature_loss", _fl_not_detached) is check.reference_feature_loss
    with pytest.raises(ValueError, match="softmax_t, kd_loss, adapter, feature_loss"):
        check.use("kd", _todo)


def test_the_kits_fallbacks_have_the_exercise_signatures():
    sig = inspect.signature(check.reference_kd_loss)
    assert list(sig.parameters) == ["student_logits", "teacher_logits", "labels", "T", "alpha"]
    assert (sig.parameters["T"].default, sig.parameters["alpha"].default) == (4.0, 0.5)
    assert list(inspect.signature(check.reference_softmax_t).parameters) == ["logits", "T"]
    params = list(inspect.signature(check.reference_feature_loss).parameters)
    assert params == ["student_map", "teacher_map", "adapter"]


# ------------------------------------------------------------------ hint, solution

def _code_lines(fn):
    lines = inspect.getsource(fn).splitlines()[1:]
    doc = (fn.__doc__ or "").strip()
    out = []
    for line in lines:
        code = line.split("#")[0].strip()
        if len(code) >= 8 and code.strip('"') not in doc:
            out.append(code)
    return out


@pytest.mark.parametrize("name", check.NAMES)
def test_hint_never_contains_the_solutions_code(name, capsys):
    assert check.hint(name) is None
    text = capsys.readouterr().out
    assert text.startswith(f"Hint for {name}:")
    code = _code_lines(getattr(check, f"reference_{name}"))
    assert code and not [line for line in code if line in text]


@pytest.mark.parametrize("name", check.NAMES)
def test_solution_warns_first_then_shows_the_source(name, capsys):
    check.solution(name)
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("Warning: try the hint first") and f"kdtp.check.hint({name!r})" in first
    assert f"def reference_{name}(" in text
    assert all(line in text for line in _code_lines(getattr(check, f"reference_{name}")))


@pytest.mark.parametrize("fn", [check.hint, check.solution])
def test_unknown_names_list_the_valid_ones(fn):
    with pytest.raises(ValueError, match="unknown exercise 'kd'.*softmax_t, kd_loss, adapter, feature_loss"):
        fn("kd")


def test_checks_never_print_the_solution(capsys):
    for name in check.NAMES:
        getattr(check, name)(_todo)
        getattr(check, name)(lambda *a: 1 / 0)
    getattr(check, "kd_loss")(_kd_swapped)
    text = capsys.readouterr().out
    for name in check.NAMES:
        assert not [line for line in _code_lines(getattr(check, f"reference_{name}")) if line in text]


# ------------------------------------------------------------------ the cases separate the mistakes

def _distinct(values_a, values_b):
    return not check._all_close(values_a, values_b)


def _variant_table(variants, cases, reference):
    table = [("reference", [reference(*c.double()).detach() for c in cases])]
    for key, fn in variants:
        table.append((key, check._variant_values(fn, cases)))
    return table


def _assert_pairwise_distinct(table):
    for (ka, va), (kb, vb) in itertools.combinations(table, 2):
        assert va is not None and vb is not None
        assert _distinct(va, vb), f"{ka} and {kb} coincide on every case"


def test_kd_variants_are_pairwise_distinguishable():
    _assert_pairwise_distinct(_variant_table(check._KD_VARIANTS, check._kd_cases(), check.reference_kd_loss))


def test_softmax_variants_are_pairwise_distinguishable():
    _assert_pairwise_distinct(_variant_table(check._SOFTMAX_VARIANTS, check._softmax_cases(),
                                             check.reference_softmax_t))


def test_feature_variants_are_pairwise_distinguishable():
    cases = check._feature_cases()
    adapted = []
    for c in cases:
        s, t, conv = check._feature_args64(c)
        adapted.append(check._Case((conv(s).detach(), t), c.desc))
    table = [("reference", [check.reference_feature_loss(*check._feature_args64(c)).detach() for c in cases])]
    table += [(key, check._variant_values(fn, adapted)) for key, fn in check._FEATURE_VARIANTS]
    _assert_pairwise_distinct(table)


def test_cases_hide_no_mistake():
    for c in check._kd_cases():
        s, t, y, T, alpha = c.args
        assert T != 1 and alpha != 0.5 and s.shape[0] != s.shape[1]
    assert len({c.args[0].shape[0] for c in check._kd_cases()}) > 1
    assert len({c.args[0].shape[1] for c in check._kd_cases()}) > 1
    assert all(c.args[1] != 1 and c.args[0].shape[0] != c.args[0].shape[1] for c in check._softmax_cases())
    assert all(cs != ct for cs, ct, _ in check._ADAPTER_CASES)


def test_every_mistake_message_key_is_tested():
    assert set(KD_MISTAKES) >= set(check._KD_MESSAGES)
    assert set(SOFTMAX_MISTAKES) >= set(check._SOFTMAX_MESSAGES)
    assert set(FEATURE_MISTAKES) >= set(check._FEATURE_MESSAGES)
