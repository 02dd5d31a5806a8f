"""The chapter's other methods, each step against its paper's definition written apart.

AT (Zagoruyko & Komodakis 2017), RKD (Park et al. 2019) and PS-KD (Kim et al. 2021):
the terms a training step logs are recomputed here from ``tests/reference_losses.py`` (in
float64, from the formulas), and so are the gradients that reach the student.
"""
import pytest
import torch
import torch.nn.functional as F

import reference_losses as ref
from kdtp.distillers import AttentionKD, ProgressiveSelfKD, RelationKD
from kdtp.distillers.attention import ATTENTION_LAYERS
from kdtp.models import build_model, feature_tap


def _pair(student="cnn_tiny", teacher="cnn_small"):
    torch.manual_seed(0)
    return build_model(student).eval(), build_model(teacher).eval()


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_attention_kd_is_logit_kd_plus_beta_half_the_sum_over_three_stages():
    student, teacher = _pair()
    x, y = _batch()
    method = AttentionKD(student, teacher, "cnn_tiny", "cnn_small", attention_weight=1000.0,
                         temperature=3.0, alpha=0.3)
    method.eval()   # BN in eval: the taps and the plain models see the same function
    logits, terms = method.training_step(x, y)
    assert set(terms) == {"ce", "kd", "at"}
    s_maps = feature_tap(student, list(ATTENTION_LAYERS["cnn_tiny"]))(x)
    t_maps = feature_tap(teacher, list(ATTENTION_LAYERS["cnn_small"]))(x)
    want_at = 500.0 * sum(ref.at_loss(s_maps[k].double(), t_maps[k].double()) for k in ("layer1", "layer2", "layer3"))
    assert torch.allclose(terms["at"].double(), want_at, rtol=1e-5)
    want_kd = ref.kd_loss(logits.double(), teacher(x).double(), y, 3.0, 0.3)
    assert torch.allclose((terms["ce"] + terms["kd"]).double(), want_kd, rtol=1e-5)
    # the AT gradient reaches the student (and nothing reaches the teacher)
    student.zero_grad()
    terms["at"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_stages_of_student_and_teacher_have_the_same_spatial_size():
    for s_arch, t_arch in (("resnet18", "resnet50"), ("cnn_small", "cnn_large"), ("air_small", "air_large")):
        s, t = build_model(s_arch).eval(), build_model(t_arch).eval()
        x = torch.zeros(1, 3, 32, 32)
        s_out = feature_tap(s, list(ATTENTION_LAYERS[s_arch]))(x)
        t_out = feature_tap(t, list(ATTENTION_LAYERS[t_arch]))(x)
        for a, b in zip(ATTENTION_LAYERS[s_arch], ATTENTION_LAYERS[t_arch]):
            assert s_out[a].shape[-2:] == t_out[b].shape[-2:], (s_arch, a, t_arch, b)


def test_relation_kd_matches_park_et_al_on_normalised_embeddings_values_and_gradients():
    student, teacher = _pair()
    x, y = _batch(7)
    method = RelationKD(student, teacher, "cnn_tiny", "cnn_small", distance_weight=25.0, angle_weight=50.0,
                        temperature=4.0, alpha=0.5)
    method.eval()
    _, terms = method.training_step(x, y)
    assert set(terms) == {"ce", "kd", "rkd_distance", "rkd_angle"}
    s_emb = feature_tap(student, ["pool"])(x)["pool"].double()
    t_emb = feature_tap(teacher, ["pool"])(x)["pool"].double()
    s_n, t_n = s_emb / s_emb.norm(dim=1, keepdim=True), t_emb / t_emb.norm(dim=1, keepdim=True)
    d, a = ref.rkd_terms(s_n, t_n)
    assert torch.allclose(terms["rkd_distance"].double(), 25 * d, rtol=1e-4)
    assert torch.allclose(terms["rkd_angle"].double(), 50 * a, rtol=1e-4)
    # gradient with respect to the student's embedding, against the reference's
    emb = s_n.clone().float().requires_grad_(True)
    ours = method.rkd(emb, t_n.float())
    (g_ours,) = torch.autograd.grad(ours, emb)
    emb64 = s_n.clone().requires_grad_(True)
    d64, a64 = ref.rkd_terms(emb64, t_n)
    (g_ref,) = torch.autograd.grad(25 * d64 + 50 * a64, emb64)
    assert torch.allclose(g_ours.double(), g_ref, rtol=1e-3, atol=1e-6)


def test_relation_groups_cover_the_batch_and_never_leave_a_lone_example():
    from kdtp.distillers.relations import relation_groups
    assert relation_groups(512, 128) == [slice(0, 128), slice(128, 256), slice(256, 384), slice(384, 512)]
    assert relation_groups(9, 4) == [slice(0, 4), slice(4, 9)]      # 1 left over: joins the last group
    assert relation_groups(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert relation_groups(7, 0) == relation_groups(7, 7) == relation_groups(7, 64) == [slice(0, 7)]


def test_relation_kd_in_groups_is_the_size_weighted_mean_of_the_paper_loss_per_group():
    student, teacher = _pair()
    x, y = _batch(11)
    method = RelationKD(student, teacher, "cnn_tiny", "cnn_small", distance_weight=25.0, angle_weight=50.0,
                        group_size=4)
    method.eval()
    _, terms = method.training_step(x, y)
    s_emb = feature_tap(student, ["pool"])(x)["pool"].double()
    t_emb = feature_tap(teacher, ["pool"])(x)["pool"].double()
    s_n, t_n = s_emb / s_emb.norm(dim=1, keepdim=True), t_emb / t_emb.norm(dim=1, keepdim=True)
    want_d = want_a = 0.0
    for a, b in ((0, 4), (4, 8), (8, 11)):      # groups of 4, 4 and 3 examples
        d, ang = ref.rkd_terms(s_n[a:b], t_n[a:b])
        want_d, want_a = want_d + (b - a) / 11 * d, want_a + (b - a) / 11 * ang
    assert torch.allclose(terms["rkd_distance"].double(), 25 * want_d, rtol=1e-4)
    assert torch.allclose(terms["rkd_angle"].double(), 50 * want_a, rtol=1e-4)
    whole = RelationKD(student, teacher, "cnn_tiny", "cnn_small", distance_weight=25.0, angle_weight=50.0,
                       group_size=0).eval()
    assert not torch.allclose(whole.training_step(x, y)[1]["rkd_angle"], terms["rkd_angle"])


def test_rkd_group_size_is_a_checked_setting_of_the_relations_run_only():
    import kdtp
    from kdtp.env import ConfigError
    recipe = kdtp.get_recipe("cpu")
    assert recipe.rkd_group_size == 128
    with pytest.raises(ConfigError, match="rkd_group_size"):
        kdtp.get_recipe("cpu", rkd_group_size=1)
    rkd = kdtp.runs.training_settings(kdtp.runs.get_run("student_kd_relations"), recipe)
    kd = kdtp.runs.training_settings(kdtp.runs.get_run("student_pretrained_kd_logits"), recipe)
    assert rkd["rkd_group_size"] == 128 and "rkd_group_size" not in kd


def test_ps_kd_targets_are_labels_then_a_growing_share_of_the_previous_epoch():
    torch.manual_seed(0)
    student = build_model("cnn_tiny")
    method = ProgressiveSelfKD(student, alpha_T=0.8)
    x, y = _batch()
    method.start_epoch(0, 4)
    assert torch.equal(method.targets(x, y, 10), F.one_hot(y, 10).float())   # epoch 0: labels only
    method.start_epoch(3, 4)                                                # alpha_t = 0.8 * 3/4
    assert method.alpha_t == pytest.approx(0.6)
    with torch.no_grad():
        before = F.softmax(student.eval()(x), 1)
    student.train()
    with torch.no_grad():                      # the model moves; its frozen past does not
        for p in student.parameters():
            p.add_(0.5)
    want = 0.4 * F.one_hot(y, 10).float() + 0.6 * before
    assert torch.allclose(method.targets(x, y, 10), want, atol=1e-6)
    logits, terms = method.training_step(x, y)
    ref_loss = -(want.double() * torch.log_softmax(logits.double(), 1)).sum(1).mean()
    assert torch.allclose(terms["ce"].double(), ref_loss, rtol=1e-5)
    # gradient of soft-target CE with respect to the logits: (softmax - target) / N
    z = logits.detach().clone().requires_grad_(True)
    loss = -(want * F.log_softmax(z, 1)).sum(1).mean()
    (g,) = torch.autograd.grad(loss, z)
    assert torch.allclose(g, (F.softmax(z, 1) - want) / len(y), atol=1e-6)
    assert not any(p.requires_grad for p in method.previous.parameters())
    assert all(not n.startswith("previous") for n in method.state_dict())    # never saved


def test_ps_kd_refuses_an_alpha_outside_zero_one():
    with pytest.raises(ValueError, match="alpha_T must be in"):
        ProgressiveSelfKD(build_model("cnn_tiny"), alpha_T=1.5)
