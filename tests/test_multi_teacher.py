"""Multi-teacher KD (10_multi_teacher): the ensemble target and CA-MKD's weights against the
formulas written out apart, the methods' frozen teachers, and runs of two teachers in the graph.

The references below are written from the papers' formulas in float64, independently of
``kdtp.distillers.multi_teacher``: Hinton et al.'s average of softened probabilities, and
CA-MKD's (Zhang, Chen & Wang, ICASSP 2022) weights ``w_k = (1 - softmax_k(CE_k)) / (K - 1)`` on
the per-teacher KL terms ``sum_k w_k T^2 KL(p_k || q)``.
"""
import math
import shutil

import pytest
import torch

import kdtp
import kdtp.resume as kresume
from kdtp import runs
from kdtp.distillers import ConfidenceMultiTeacherKD, LogitKD, MultiTeacherKD
from kdtp.distillers.multi_teacher import confidence_weights, ensemble_accuracy, ensemble_soft_targets
from kdtp.env import ConfigError
from kdtp.models import build_model
from kdtp.recipes import get_recipe
from kdtp.runner import train_or_load
from kdtp.store import config_hash

T = 3.0


pytestmark = pytest.mark.usefixtures("restore_run_registry")   # conftest.py


# ----------------------------------------------------------------------------- references (float64)
def ref_softmax(z, t=1.0):
    e = [[math.exp(v / t) for v in row] for row in z.tolist()]
    return torch.tensor([[v / sum(row) for v in row] for row in e], dtype=torch.float64)


def ref_teacher_ce(z, y):
    """-log softmax(z)[y] per image, from the definition."""
    p = ref_softmax(z)
    return torch.tensor([-math.log(p[i, int(y[i])]) for i in range(len(y))], dtype=torch.float64)


def ref_camkd_weights(zs, y):
    """CA-MKD: w_k = (1 - exp(CE_k) / sum_j exp(CE_j)) / (K - 1), per image."""
    ce = torch.stack([ref_teacher_ce(z, y) for z in zs])          # (K, B)
    K = len(zs)
    w = torch.empty_like(ce)
    for i in range(ce.shape[1]):
        total = sum(math.exp(ce[k, i]) for k in range(K))
        for k in range(K):
            w[k, i] = (1 - math.exp(ce[k, i]) / total) / (K - 1)
    return w


def ref_per_teacher_kd(s, zs, w, t):
    """The paper's KD term: sum_k sum_i w_ki T^2 KL(p_k,i || q_i), averaged over the batch (autograd-able)."""
    log_q = torch.log_softmax(s / t, dim=1)
    total = 0.0
    for k, z in enumerate(zs):
        p = ref_softmax(z, t)
        kl = (p * (p.log() - log_q)).sum(1)
        total = total + (w[k] * kl).sum()
    return t ** 2 * total / s.shape[0]


def _logits(K=3, B=5, C=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = [3 * torch.randn(B, C, generator=g, dtype=torch.float64) for _ in range(K)]
    return zs, torch.randint(0, C, (B,), generator=g), torch.randn(B, C, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- the formulas
def test_mean_and_weighted_targets_match_the_formula_and_are_distributions():
    zs, y, _ = _logits()
    mean = ensemble_soft_targets(zs, T)
    want = sum(ref_softmax(z, T) for z in zs) / 3
    assert torch.allclose(mean, want, atol=1e-12)
    assert torch.allclose(ensemble_soft_targets(zs, T, torch.full((3,), 1 / 3, dtype=torch.float64)), want)
    w = ref_camkd_weights(zs, y)
    weighted = ensemble_soft_targets(zs, T, w)
    want_w = sum(w[k][:, None] * ref_softmax(z, T) for k, z in enumerate(zs))
    assert torch.allclose(weighted, want_w, atol=1e-12)
    for target in (mean, weighted):
        assert (target >= 0).all() and torch.allclose(target.sum(1), torch.ones(5, dtype=torch.float64))


def test_camkd_weights_match_the_paper_sum_to_one_and_favour_the_teacher_that_is_right():
    zs, y, _ = _logits(K=3)
    w = confidence_weights(zs, y)
    assert torch.allclose(w, ref_camkd_weights(zs, y), atol=1e-12)
    assert torch.allclose(w.sum(0), torch.ones(5, dtype=torch.float64)) and (w >= 0).all()
    # teacher 0 sure of the label on image 0 and wrong on image 1; teacher 1 the other way round
    y2 = torch.tensor([2, 7])
    right_then_wrong = torch.full((2, 10), 0.0)
    right_then_wrong[0, 2], right_then_wrong[1, 4] = 6.0, 6.0
    wrong_then_right = torch.full((2, 10), 0.0)
    wrong_then_right[0, 5], wrong_then_right[1, 7] = 6.0, 6.0
    w2 = confidence_weights([right_then_wrong, wrong_then_right], y2)
    assert w2[0, 0] > 0.99 and w2[1, 1] > 0.99
    # two teachers: (1 - softmax(CE)) is softmax(-CE); equal teachers weigh 1/2 each
    ce2 = torch.stack([ref_teacher_ce(z, y2) for z in (right_then_wrong, wrong_then_right)])
    assert torch.allclose(w2.double(), torch.softmax(-ce2, 0), atol=1e-6)
    assert torch.allclose(confidence_weights([right_then_wrong] * 2, y2), torch.full((2, 2), 0.5))


def test_kd_term_values_and_gradients_against_the_papers_per_teacher_form():
    zs, y, s = _logits(K=3)
    method = ConfidenceMultiTeacherKD(build_model("cnn_tiny"), [build_model("cnn_tiny")] * 2,
                                      temperature=T, alpha=0.3)
    w = ref_camkd_weights(zs, y)
    s1 = s.clone().requires_grad_(True)
    terms = method.terms(s1, zs, y)
    assert set(terms) == {"ce", "kd"}
    (g_kit,) = torch.autograd.grad(terms["kd"], s1)
    s2 = s.clone().requires_grad_(True)
    paper = 0.7 * ref_per_teacher_kd(s2, zs, w, T)
    (g_paper,) = torch.autograd.grad(paper, s2)
    assert torch.allclose(g_kit, g_paper, atol=1e-10)          # the student learns the same thing
    # values: the kit's KL to the mixture p is the paper's minus T^2 sum_k w_k KL(p_k || p) >= 0
    p = ensemble_soft_targets(zs, T, w)
    gap = T ** 2 * sum((w[k] * (ref_softmax(z, T) * (ref_softmax(z, T).log() - p.log())).sum(1)).sum()
                       for k, z in enumerate(zs)) / len(y)
    assert gap > 0 and torch.allclose(terms["kd"], paper - 0.7 * gap, atol=1e-10)
    ce = -torch.log_softmax(s, 1)[torch.arange(5), y].mean()
    assert torch.allclose(terms["ce"], 0.3 * ce, atol=1e-12)


def test_mean_of_copies_of_one_teacher_is_that_teacher_and_its_kd_is_plain_kd():
    zs, y, s = _logits(K=1)
    assert torch.allclose(ensemble_soft_targets(zs * 3, T), ref_softmax(zs[0], T), atol=1e-12)
    net = build_model("cnn_tiny")
    multi = MultiTeacherKD(build_model("cnn_tiny"), [net, net], temperature=T, alpha=0.4).terms(s, zs * 2, y)
    single = LogitKD(build_model("cnn_tiny"), net, temperature=T, alpha=0.4).loss.terms(s, zs[0], y)
    assert all(torch.allclose(multi[k], single[k], atol=1e-10) for k in ("ce", "kd"))


def test_ensemble_accuracy_is_the_argmax_of_the_mean_probability():
    a = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])
    b = torch.tensor([[0.2, 0.8], [0.3, 0.7], [0.7, 0.3]])
    # means: [0.55, 0.45] -> 0, [0.35, 0.65] -> 1, [0.575, 0.425] -> 0
    assert ensemble_accuracy([a, b], torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_bad_inputs_say_what_to_do():
    zs, y, _ = _logits(K=2)
    with pytest.raises(ValueError, match="sum to 1"):
        ensemble_soft_targets(zs, T, torch.ones(2, 5))
    with pytest.raises(ValueError, match="like teacher 0"):
        ensemble_soft_targets([zs[0], zs[1][:, :5]], T)
    with pytest.raises(ValueError, match="at least 2"):
        confidence_weights(zs[:1], y)


# ----------------------------------------------------------------------------- the methods
def test_teachers_are_frozen_in_eval_mode_and_never_saved():
    torch.manual_seed(0)
    student, teachers = build_model("cnn_tiny"), [build_model("cnn_tiny"), build_model("cnn_small")]
    method = ConfidenceMultiTeacherKD(student, teachers, temperature=T, alpha=0.5).train()
    assert student.training and not any(t.training for t in teachers)
    assert not any(p.requires_grad for t in teachers for p in t.parameters())
    assert all(k.startswith("student.") for k in method.state_dict())
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    logits, terms = method.training_step(x, y)
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for t in teachers for p in t.parameters())
    assert all(torch.equal(v, t.state_dict()[k]) for t, b in zip(teachers, before) for k, v in b.items())


def test_one_teacher_is_refused_with_what_to_do():
    run = kdtp.Run("mt_test_one", method="kd_multi_mean", arch="cnn_tiny")   # the lab's teacher only
    with pytest.raises(ConfigError, match="at least 2 teachers, got 1.*teacher=\\("):
        runs.build_strategy(run, get_recipe("cpu", smoke=True), build_model("cnn_tiny"), [build_model("cnn_tiny")])


def test_course_runs_learn_from_both_teachers_and_hash_both():
    class Data:
        source = "cifar10"
        sizes = staticmethod(lambda: {"train": 45000, "val": 5000, "test": 10000})
        fingerprint = staticmethod(lambda: "f" * 64)

    b = runs.get_run("teacher_b")
    for name in ("paper", "fast", "cpu"):
        recipe = get_recipe(name, smoke=False)
        a_cfg = runs.run_config(runs.get_run(runs.TEACHER), recipe, Data())
        b_cfg = runs.run_config(b, recipe, Data())
        assert b_cfg["seed"] == 1 and a_cfg["seed"] == 0 and b_cfg["arch"] == a_cfg["arch"] == recipe.teacher_arch
        hashes = [config_hash(a_cfg), config_hash(b_cfg)]
        for student in ("student_multi_mean", "student_multi_confidence"):
            cfg = runs.run_config(runs.get_run(student), recipe, Data(), hashes)
            assert cfg["teacher_config"] == hashes and cfg["teachers"] == [runs.TEACHER, "teacher_b"]
            other = runs.run_config(runs.get_run(student), recipe, Data(), [hashes[0], "another"])
            assert config_hash(cfg) != config_hash(other)     # a retrained teacher b retrains the student
            assert cfg["temperature"] == recipe.temperature and cfg["alpha"] == recipe.alpha


# ----------------------------------------------------------------------------- a tiny run of two teachers
# the session's data folder (conftest): the synthetic set is generated once per test session
TINY = dict(recipe="cpu", smoke=True, train_subset=128, val_subset=64, test_subset=64, epochs=2,
            progress=False, verbose=False)


class Crash(Exception):
    pass


def test_tiny_two_teacher_run_trains_hashes_both_teachers_resumes_and_loads(tmp_path, monkeypatch):
    kdtp.Run("mt_test_a", role="teacher", arch="cnn_tiny")
    kdtp.Run("mt_test_b", role="teacher", arch="cnn_tiny", overrides={"teacher_seed": 1})
    kdtp.Run("mt_test_student", method="kd_multi_confidence", teacher=("mt_test_a", "mt_test_b"), arch="cnn_tiny")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = train_or_load("mt_test_student", ckpt_dir=straight, **TINY)
    a, b = done.teachers
    assert (a.name, b.name) == ("mt_test_a", "mt_test_b") and a.config["seed"] == 0 and b.config["seed"] == 1
    assert done.config["teacher_config"] == [a.config_hash, b.config_hash]
    assert done.config["method"] == "kd_multi_confidence" and {"train_ce", "train_kd"} <= set(done.history)
    again = [train_or_load(n, ckpt_dir=straight, **TINY) for n in ("mt_test_a", "mt_test_b")]
    for used, fresh in zip((a, b), again):      # the teachers left training as they came
        assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in used.model.state_dict().items())

    # an interrupted run resumes and ends where the straight one did
    for t in (a, b):
        dst = resumed / t.path.relative_to(straight)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(t.path, dst)
    real_fit = kresume.fit

    def crash_after_one(strategy, *args, on_epoch_end, **kwargs):
        def cb(state):
            on_epoch_end(state)
            raise Crash
        return real_fit(strategy, *args, on_epoch_end=cb, **kwargs)

    monkeypatch.setattr(kresume, "fit", crash_after_one)
    with pytest.raises(Crash):
        train_or_load("mt_test_student", ckpt_dir=resumed, **TINY)
    monkeypatch.setattr(kresume, "fit", real_fit)
    back = train_or_load("mt_test_student", ckpt_dir=resumed, **TINY)
    assert back.source == "resumed" and back.config_hash == done.config_hash
    assert back.metrics["test_acc"] == done.metrics["test_acc"]
    monkeypatch.setattr(kresume, "fit", lambda *a, **k: pytest.fail("trained a finished run again"))
    loaded = train_or_load("mt_test_student", ckpt_dir=straight, **TINY)
    assert loaded.source == "loaded" and loaded.config_hash == done.config_hash
