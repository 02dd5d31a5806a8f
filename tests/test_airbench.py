"""The `cpu_air` recipe's airbench-style networks and training tricks, each against an
independent reference: the measured candidate script (benchmarks/airbench_cpu_candidate.py,
itself a transcription of Keller Jordan's airbench94) or the definition written out here.
"""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdtp.batches import DeviceLoader, translate
from kdtp.models import (AIR_ARCHS, AirbenchCNN, build_model, count_parameters, feature_shape, feature_tap,
                         needs_data_init)
from kdtp.recipes import get_recipe
from kdtp.train import LookaheadSGD, make_optimizer, make_scheduler, norm_bias_groups

CANDIDATE = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_cpu_candidate.py"


def _candidate():
    spec = importlib.util.spec_from_file_location("airbench_cpu_candidate", CANDIDATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _kit_and_candidate(arch: str, widths: str):
    torch.manual_seed(0)
    kit = build_model(arch)
    cand = _candidate().make_net(widths).to(memory_format=torch.contiguous_format)
    kit_values, cand_values = list(kit.state_dict().values()), list(cand.state_dict().values())
    assert [v.shape for v in kit_values] == [v.shape for v in cand_values]
    torch.manual_seed(1)
    cand.load_state_dict({k: torch.randn_like(v) if v.is_floating_point() else v
                          for k, v in cand.state_dict().items()})
    with torch.no_grad():
        for a, b in zip(kit_values, cand.state_dict().values()):
            a.copy_(b)
    for m in list(kit.modules()) + list(cand.modules()):      # BatchNorm variances must be > 0
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_()
    return kit, cand


@pytest.mark.parametrize("arch, widths", [("air_large", "32,128,128"), ("air_small", "16,48,64")])
def test_the_kits_network_is_the_measured_candidates_function_and_gradients(arch, widths):
    kit, cand = _kit_and_candidate(arch, widths)
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        kit.train(mode == "train"), cand.train(mode == "train")
        a, b = kit(x), cand(x)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    kit.train(), cand.train()
    kit(x).square().sum().backward()
    cand(x).square().sum().backward()
    kit_grads = [p.grad for p in kit.parameters() if p.requires_grad]
    cand_grads = [p.grad for p in cand.parameters() if p.requires_grad]
    assert len(kit_grads) == len(cand_grads)
    for g, h in zip(kit_grads, cand_grads):
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-5)


def test_sizes_frozen_parts_and_stage_names():
    teacher, student = build_model("air_large"), build_model("air_small")
    assert count_parameters(teacher, trainable_only=True) == 497_240
    assert count_parameters(teacher) / count_parameters(student) >= 4          # issue 13: >= 4x smaller
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert "stem.0.weight" in frozen and all(n.endswith(".weight") for n in frozen)
    assert len(frozen) == 1 + 6                                                # whitening + 6 BN scales
    maps = feature_tap(student, ["layer1", "layer2", "layer3", "pool"])(torch.randn(2, 3, 32, 32))
    assert [tuple(maps[k].shape[1:]) for k in ("layer1", "layer2", "layer3")] == [(16, 15, 15), (48, 7, 7),
                                                                                 (64, 3, 3)]
    torch.testing.assert_close(maps["logits"], student.fc(maps["pool"]))
    assert feature_shape(teacher, "layer3") == (128, 3, 3)
    assert needs_data_init(student) and not needs_data_init(build_model("cnn_small"))
    assert set(AIR_ARCHS) >= {"air_large", "air_small"}
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("air_small", pretrained=True)


def test_dirac_init_passes_the_input_through_the_first_filters():
    conv = build_model("air_small").layer2[0]              # 16 -> 48 channels
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(conv(x)[:, :16], x)


def test_whitening_decorrelates_the_patches_it_was_estimated_from():
    torch.manual_seed(0)
    mixing = torch.randn(3, 3)
    images = torch.einsum("ij,bjhw->bihw", mixing, torch.randn(400, 3, 16, 16)).cumsum(-1) * 2   # eigenvalues >> eps
    model = build_model("air_small")
    model.init_whitening(images)
    out = F.conv2d(images, model.stem[0].weight)            # no bias: the decorrelation alone
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = half.T @ half / len(half)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.double), atol=0.02, rtol=0.0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])


def test_whitening_matches_the_candidate_script():
    # each filter is an eigenvector, defined up to its sign (and up to a rotation where
    # eigenvalues tie): compare what is defined, sum_i w_i w_i^T = 2 (C + eps)^-1
    torch.manual_seed(0)
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    model, cand = build_model("air_small"), _candidate().make_net("16,48,64")
    model.init_whitening(images)
    _candidate().init_whitening(cand[0], images)
    ours, theirs = model.stem[0].weight.flatten(1), cand[0].weight.flatten(1)
    torch.testing.assert_close(ours.T @ ours, theirs.T @ theirs, rtol=1e-3, atol=1e-3)
    assert torch.linalg.matrix_rank(ours.double()) == 12


def test_translate_is_a_reflect_padded_crop_of_the_flipped_image():
    x = torch.randint(0, 256, (6, 3, 9, 9), dtype=torch.uint8)
    flip = torch.tensor([True, False, True, False, True, False])
    out = translate(x, torch.Generator().manual_seed(3), flip)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(-2, 3, (6,), generator=g), torch.randint(-2, 3, (6,), generator=g)
    mirrored = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).float()
    padded = F.pad(mirrored, (2, 2, 2, 2), mode="reflect")
    expected = torch.stack([padded[i, :, 2 + dy[i]:11 + dy[i], 2 + dx[i]:11 + dx[i]] for i in range(6)])
    assert torch.equal(out.float(), expected)


def test_alternating_flip_mirrors_every_image_every_other_epoch_and_resumes():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(40), 40, train=True, seed=5, augmentation="airbench")
    base = loader.base_flips().clone()
    assert 0 < base.sum() < 40
    again = DeviceLoader(images, torch.arange(40), 40, train=True, seed=5, augmentation="airbench")
    assert torch.equal(again.base_flips(), base)                   # from the seed alone: resumable
    for epoch in (0, 1, 2, 3):
        loader.set_epoch(epoch), again.set_epoch(epoch)
        (a, _), = list(loader)
        (b, _), = list(again)
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="augmentation='mixup' is unknown"):
        DeviceLoader(images, torch.arange(40), 8, train=True, augmentation="mixup")


def test_alternating_flip_flips_the_same_image_at_odd_epochs(monkeypatch):
    import kdtp.batches as kdata

    seen = []
    monkeypatch.setattr(kdata, "translate", lambda x, gen, flip: seen.append(flip.clone()) or x)
    images = torch.zeros(16, 3, 8, 8, dtype=torch.uint8)
    loader = DeviceLoader(torch.zeros(16, 3, 8, 8, dtype=torch.uint8), torch.arange(16), 16, train=True,
                          augmentation="airbench")
    flips = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen.clear()
        gen = torch.Generator().manual_seed(loader.seed * 100_003 + epoch)
        order = torch.randperm(16, generator=gen)
        list(loader)
        flips.append(torch.empty(16, dtype=torch.bool).index_put_((order,), seen[0]))
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[0], loader.base_flips())
    assert images.sum() == 0


def test_norm_bias_groups_give_the_shifts_64x_the_rate_and_the_same_decay_per_step():
    model = build_model("air_small")
    groups = norm_bias_groups(model, lr=1.5, weight_decay=0.002, lr_scale=64.0)
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in groups[1]["params"]} == shifts
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    opt = make_optimizer(groups, "sgd", 1.5, 0.002, 0.85)
    rates = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert rates[1][0] == pytest.approx(64 * 1.5)
    assert rates[0][0] * rates[0][1] == pytest.approx(rates[1][0] * rates[1][1])
    assert len(norm_bias_groups(model, 1.5, 0.002, 1.0)) == 1


def test_airbench_schedule_warms_from_a_fifth_then_decays_to_0_07():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, "airbench", 100, 0.23)
    factors = []
    for _ in range(100):
        factors.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert factors[0] == pytest.approx(0.2) and factors[23] == pytest.approx(1.0)
    assert factors[11] == pytest.approx(0.2 + 0.8 * 11 / 23)
    assert factors[99] == pytest.approx(1.0 - 0.93 * 76 / 77)


def _reference_lookahead_run(model, batches, total, lr=0.1):
    """The candidate script's loop, written out: SGD steps, every 5th a pull toward the
    average with decay 0.95^5 (step / total)^3, the network set to the average at the end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.85, nesterov=True)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    decay = 0.95 ** 5 * (torch.arange(total + 1) / total) ** 3

    def pull(d):
        for e, v in zip(ema.values(), model.state_dict().values()):
            if v.dtype == torch.float:
                e.lerp_(v, 1 - d)
                v.copy_(e)
    for step, (x, y) in enumerate(batches, start=1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % 5 == 0:
            pull(decay[step].item())
        if step >= total:
            pull(1.0)
    return model.state_dict()


def _kit_lookahead_run(model, batches, total, lr=0.1, stop=None, state=None):
    opt = make_optimizer(model.parameters(), "sgd", lr, 0.0, 0.85, lookahead_model=model, total_steps=total)
    assert isinstance(opt, LookaheadSGD)
    if state is not None:
        opt.load_state_dict(state)
    for x, y in batches[opt.steps_done:stop]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_lookahead_is_the_candidates_and_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(17)]
    expected = _reference_lookahead_run(_tiny(), batches, total=17)
    whole = _tiny()
    _kit_lookahead_run(whole, batches, total=17)
    for k, v in expected.items():
        torch.testing.assert_close(whole.state_dict()[k], v, rtol=0, atol=0)
    # interrupted after 7 steps (saved), resumed in a fresh model + optimizer: bit for bit
    first = _tiny()
    opt = _kit_lookahead_run(first, batches, total=17, stop=7)
    saved_model, saved_opt = {k: v.clone() for k, v in first.state_dict().items()}, opt.state_dict()
    resumed = _tiny()
    resumed.load_state_dict(saved_model)
    _kit_lookahead_run(resumed, batches, total=17, state=saved_opt)
    for k, v in expected.items():
        assert torch.equal(resumed.state_dict()[k], v), k
    # a state without the average (e.g. a plain SGD's) is refused, not silently restarted
    plain = torch.optim.SGD(_tiny().parameters(), lr=0.1, momentum=0.85, nesterov=True).state_dict()
    with pytest.raises(ValueError, match="no lookahead average"):
        make_optimizer(resumed.parameters(), "sgd", 0.1, 0.0, 0.85, lookahead_model=resumed,
                       total_steps=17).load_state_dict(plain)
    with pytest.raises(ValueError, match="lookahead is built on SGD"):
        make_optimizer(resumed.parameters(), "adamw", 0.1, 0.0, lookahead_model=resumed, total_steps=17)


def test_the_cpu_air_recipe_is_the_candidate_measured():
    cpu = get_recipe("cpu_air", smoke=False)
    assert (cpu.teacher_arch, cpu.student_arch, cpu.temperature, cpu.batch_size, cpu.epochs) == \
        ("air_large", "air_small", 1.0, 1024, 6)
    kilostep = 1024 * (1 + 1 / (1 - cpu.momentum))                 # airbench's decoupled units
    assert cpu.lr == pytest.approx(11.5 / kilostep * 1024)             # per-example lr 11.5, mean loss
    assert cpu.lr * cpu.weight_decay == pytest.approx(0.0153 * 1024 / kilostep)
    assert (cpu.augmentation, cpu.norm_bias_lr_scale, cpu.lookahead) == ("airbench", 64.0, True)
    old = get_recipe("cpu", smoke=False)                          # the default, unchanged
    assert (old.teacher_arch, old.student_arch) == ("cnn_large", "cnn_small")
    with pytest.raises(Exception, match="lookahead needs optimizer sgd"):
        get_recipe("cpu_air", optimizer="adamw")
    with pytest.raises(Exception, match="augmentation must be one of"):
        get_recipe("cpu_air", augmentation="cutout")


def test_a_fresh_run_sets_the_whitening_from_its_training_images(tmp_path):
    from kdtp.checkpoint import train_or_load

    r = train_or_load("student_scratch_baseline", "cpu_air", smoke=True, ckpt_dir=tmp_path, data_dir=tmp_path / "d",
                      progress=False, verbose=False, train_subset=256, val_subset=64, test_subset=64,
                      student_arch="air_w4")
    assert isinstance(r.model, AirbenchCNN)
    weight = r.model.stem[0].weight
    assert not math.isclose(weight.abs().sum().item(), build_model("air_w4").stem[0].weight.abs().sum().item())
    torch.testing.assert_close(weight[12:], -weight[:12])


@pytest.mark.parametrize("run", ["student_pretrained_kd_features", "student_kd_attention", "student_kd_relations",
                                 "student_kd_channels"])
def test_every_method_that_reads_inner_maps_runs_on_the_airbench_pair(run):
    import kdtp.course  # noqa: F401  (declares the chapter's runs)
    from kdtp import runs

    recipe = get_recipe("cpu_air", smoke=True)
    student, teacher = build_model("air_small"), build_model("air_large").eval()
    strategy = runs.build_strategy(runs.get_run(run), recipe, student, teacher)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits, terms = strategy.training_step(x, y)
    assert logits.shape == (8, 10) and len(terms) >= 2
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert student.layer1[0].weight.grad is not None and student.stem[0].weight.grad is None   # whitening frozen


@pytest.mark.parametrize("augmentation", ["airbench", "crop"])
def test_shared_augmentation_shows_every_seed_the_same_images_in_its_own_order(augmentation):
    """Labels carry the image index, so each batch says which augmented copy of which image it
    holds. 70 images in batches of 16: each epoch leaves 6 out, the same 6 for every seed."""
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8)

    def copies(seed, epoch, shared=True):
        loader = DeviceLoader(images, torch.arange(70), 16, train=True, seed=seed,
                              augmentation=augmentation, shared_augmentation=shared)
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 4 and all(len(y) == 16 for _, y in batches)
        order = torch.cat([y for _, y in batches])
        seen = torch.cat([x for x, _ in batches])
        return order, order.sort().values, seen[order.argsort()]   # order, which images, their copies

    order0, shown0, copy0 = copies(0, 0)
    order1, shown1, copy1 = copies(1, 0)
    assert not torch.equal(order0, order1), "seeds still shuffle differently"
    assert torch.equal(shown0, shown1), "the same 64 images shown by every seed"
    assert torch.equal(copy0, copy1), "and every image looks the same to every seed"
    assert torch.equal(copies(1, 0)[2], copy1), "resumable: from the epoch alone"
    other_epoch = copies(0, 1)
    assert not torch.equal(other_epoch[1], shown0) or not torch.equal(other_epoch[2], copy0), \
        "another epoch: other images left out, other shifts and flips"
    unshared = copies(0, 0, shared=False), copies(1, 0, shared=False)
    assert not torch.equal(unshared[0][1], unshared[1][1]) or not torch.equal(unshared[0][2], unshared[1][2]), \
        "unshared: what is left out and the augmentation come from the seed"


def test_the_whitening_bias_trains_its_first_epochs_then_stays_frozen():
    """airbench's ``whiten_bias_epochs``: the bias moves in epoch 1, not after (plain SGD here:
    the lookahead average would pull even a frozen weight toward its mean, as airbench's does)."""
    from kdtp.distillers import Strategy
    from kdtp.resume import whitening_schedule
    from kdtp.train import fit

    torch.manual_seed(0)
    model = build_model("air_w4")
    x, y = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (256,))
    train, val = DeviceLoader(x, y, 64, train=True), DeviceLoader(x[:64], y[:64], 64, train=False)
    opt = make_optimizer(norm_bias_groups(model, 0.1, 5e-4, 64.0), "sgd", 0.1, 5e-4)
    sched = make_scheduler(opt, "constant", 12, 0.0)
    seen = []
    fit(Strategy(model), train, val, optimizer=opt, scheduler=sched, epochs=3, progress=False,
        before_epoch=whitening_schedule(model, 1),
        on_epoch_end=lambda s: seen.append((model.stem[0].bias.detach().clone(),
                                            model.layer1[0].weight.detach().clone())))
    (bias1, conv1), (bias2, conv2), (bias3, conv3) = seen
    assert bias1.abs().sum() > 0, "trained in the first epoch (it starts at zero)"
    assert torch.equal(bias1, bias2) and torch.equal(bias2, bias3), "frozen after it"
    assert not torch.equal(conv1, conv2) and not torch.equal(conv2, conv3), "the rest still trains"
    assert not model.stem[0].bias.requires_grad
    assert whitening_schedule(model, 0) is None and whitening_schedule(build_model("cnn_tiny"), 3) is None
    assert get_recipe("cpu_air", smoke=False).whiten_bias_epochs == 3 and get_recipe("fast").whiten_bias_epochs == 0
    with pytest.raises(Exception, match="whiten_bias_epochs must be >= 0"):
        get_recipe("cpu_air", whiten_bias_epochs=-1)
