"""Compression (notebook 12): pruning masks, channel shrinking, low rank, int8, measurements.

The fine-tunes are runs like any other: a pruned run keeps its zeros through every step, its
``last`` file, a resume and its ``best`` file; a low-rank run saves a plain network that the
deployed factorised form reproduces. Tiny networks and data throughout (``cnn_tiny``, 128
training images): these tests check mechanics, not accuracy.
"""
import shutil
import sys

import pytest
import torch
from torch import nn

import kdtp.resume as kresume
from kdtp import Run, runs
from kdtp.checkpoint import load_checkpoint, train_or_load
from kdtp.compress import lowrank, measure, prune, quantize
from kdtp.compress.deploy import checkpoint_network, deployed
from kdtp.models import build_model, count_parameters
from kdtp.recipes import get_recipe
from kdtp.runs import build_strategy, get_data, loaders
from kdtp.train import evaluate

TINY = dict(recipe="cpu", smoke=True, progress=False, verbose=False, train_subset=128, val_subset=64,
            test_subset=64, teacher_arch="cnn_tiny", student_arch="cnn_tiny", teacher_epochs=1, epochs=1)
INIT = "student_pretrained_kd_logits"


@pytest.fixture(scope="module")
def declared():
    """Two runs of the course's methods, declared for these tests only (removed after them)."""
    made = {"pruned": Run("test_compress_pruned", method="kd_prune80", init_from=INIT, overrides={"epochs": 2}),
            "lowrank": Run("test_compress_lowrank", method="kd_lowrank25", init_from=INIT)}
    yield made
    for run in made.values():
        runs.REGISTRY.pop(run.name, None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint folder holding the tiny teacher and the distilled student runs start from
    (data: the session's synthetic set, generated once for all tests)."""
    root = tmp_path_factory.mktemp("compress")
    init = train_or_load(INIT, ckpt_dir=root / "ck", **TINY)
    return {"ck": root / "ck", "init": init}


def _fresh_folder(trained, tmp_path):
    """A copy of the trained folder, so each test's runs start from the same files."""
    shutil.copytree(trained["ck"], tmp_path / "ck")
    return dict(TINY, ckpt_dir=tmp_path / "ck")


def _zeros_where_masked(state: dict, masks: dict) -> bool:
    return all(torch.all(state[name][~mask.to(state[name].device)] == 0) for name, mask in masks.items())


class Crash(Exception):
    """Stands for a disconnect right after the first epoch's ``last`` file was written."""


def test_pruning_masks_hold_through_training_save_resume_and_load(trained, declared, tmp_path, monkeypatch):
    PRUNED = declared["pruned"]
    kw = _fresh_folder(trained, tmp_path)
    masks = prune.magnitude_masks(trained["init"].model, 0.8)       # what the run chooses from its start
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == pytest.approx(0.2 * sum(m.numel() for m in masks.values()), abs=1)

    shutil.copytree(tmp_path / "ck", tmp_path / "straight")
    straight = train_or_load(PRUNED, **dict(kw, ckpt_dir=tmp_path / "straight"))
    best = load_checkpoint(straight.path)["model"]
    assert _zeros_where_masked(best, masks) and prune.sparsity(checkpoint_network(straight)) >= 0.799

    real_fit = kresume.fit

    def crashing_fit(strategy, *args, on_epoch_end, **kwargs):
        def cb(state):
            on_epoch_end(state)
            if state.epoch == 1:
                raise Crash
        return real_fit(strategy, *args, on_epoch_end=cb, **kwargs)

    monkeypatch.setattr(kresume, "fit", crashing_fit)
    with pytest.raises(Crash):
        train_or_load(PRUNED, **kw)
    last = load_checkpoint(tmp_path / "ck" / "smoke" / "cpu" / f"{PRUNED.name}_last.pt")
    assert _zeros_where_masked(last["model"], masks) and _zeros_where_masked(last["best_model"], masks)
    saved = {k[len("mask."):]: v for k, v in last["extra"].items()}
    assert saved.keys() == masks.keys() and all(torch.equal(saved[k].cpu(), masks[k].cpu()) for k in masks)

    monkeypatch.setattr(kresume, "fit", real_fit)
    resumed = train_or_load(PRUNED, **kw)
    assert resumed.source == "resumed"
    for key, value in load_checkpoint(resumed.path)["model"].items():
        assert torch.equal(value, best[key]), f"{key}: the resumed run ends where the straight one did"
    loaded = train_or_load(PRUNED, **kw)
    assert loaded.source == "loaded" and _zeros_where_masked(loaded.model.state_dict(), masks)


def _with_random_bn(model: nn.Module) -> nn.Module:
    """BN statistics and affine values away from their defaults, so shrinking is really tested."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["cnn_tiny", "air_small", "resnet18"])
def test_channel_pruning_shrinks_to_a_smaller_net_computing_the_same(arch):
    torch.manual_seed(0)
    model = _with_random_bn(build_model(arch))
    masks = prune.channel_masks(model, 0.5)
    held = prune.MaskedWeights(model, masks)
    # one SGD step with momentum and weight decay: the masked weights stay exactly 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    model.eval()
    assert _zeros_where_masked(dict(model.named_parameters()), masks)
    held.remove()

    small = prune.shrink_channels(model)
    before, after = prune.channel_widths(model), prune.channel_widths(small)
    assert all(after[k] == before[k] - round(0.5 * before[k]) for k in before), (before, after)
    out = small(x)
    assert out.shape == (4, 10)
    assert torch.allclose(out, model(x), atol=1e-4), "removing zeroed channels changes nothing"
    assert measure.nonzero_parameters(small) < 0.6 * count_parameters(build_model(arch))


def test_channel_pruning_refuses_a_network_it_does_not_know():
    with pytest.raises(ValueError, match="unstructured"):
        prune.channel_masks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 0.5)


def test_full_rank_factorisation_reproduces_the_convolution_and_saves_as_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    full = lowrank.LowRankConv2d(conv, lowrank.full_rank(conv), as_conv=True)
    x = torch.randn(2, 8, 9, 9)
    assert torch.allclose(full(x), conv(x), atol=1e-5)
    assert full.state_dict().keys() == conv.state_dict().keys(), "inside a run it saves as the conv"
    assert set(lowrank.LowRankConv2d(conv, 3).state_dict()) == {"first", "second", "bias"}, "deployed: its factors"
    assert torch.allclose(full.state_dict()["weight"], conv.weight, atol=1e-6)

    low = lowrank.LowRankConv2d(conv, 3, as_conv=True)        # truncated: no longer the same
    assert not torch.allclose(low(x), conv(x), atol=1e-3)
    plain = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    plain.load_state_dict(low.state_dict())                    # a checkpoint of it loads into a conv
    assert torch.allclose(plain(x), low(x), atol=1e-5)
    again = lowrank.LowRankConv2d(conv, 3, as_conv=True)
    again.load_state_dict(plain.state_dict())                  # and back: exact at rank 3
    assert torch.allclose(again(x), low(x), atol=1e-5)
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in conv.parameters())

    net = build_model("cnn_tiny").eval()
    y = torch.randn(2, 3, 32, 32)
    assert torch.allclose(lowrank.factorize(net, 1.0)(y), net(y), atol=1e-4)
    with pytest.raises(ValueError, match="rank"):
        lowrank.LowRankConv2d(conv, 100)


def test_lowrank_run_saves_a_plain_network_that_its_deployed_form_reproduces(trained, declared, tmp_path):
    LOWRANK = declared["lowrank"]
    kw = _fresh_folder(trained, tmp_path)
    run = train_or_load(LOWRANK, **kw)
    small = deployed(run)
    assert set(lowrank.factorised_layers(small)) == set(lowrank.largest_convs(build_model("cnn_tiny")))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(small(x), run.model.eval()(x), atol=1e-4)
    loaded = train_or_load(LOWRANK, **kw)
    assert loaded.source == "loaded"
    assert torch.allclose(deployed(loaded)(x), small(x), atol=1e-4)
    assert measure.nonzero_parameters(small) < measure.nonzero_parameters(loaded.model)
    assert measure.size_on_disk(small)["size_mb"] < measure.size_on_disk(loaded.model)["size_mb"]
    # the factors are the method's extra state: a resumed run continues from the very same ones
    recipe = get_recipe("cpu", smoke=True, teacher_arch="cnn_tiny", student_arch="cnn_tiny")
    strategy = build_strategy(LOWRANK, recipe, build_model("cnn_tiny"), [build_model("cnn_tiny")])
    extra = {k: v + 1.0 for k, v in strategy.extra_state().items()}
    strategy.load_extra_state(extra)
    assert all(torch.equal(v, strategy.extra_state()[k]) for k, v in extra.items())


def test_int8_model_saves_loads_and_keeps_its_accuracy(trained, tmp_path):
    ok, why = quantize.availability()
    if not ok:
        pytest.skip(why)
    recipe = get_recipe("cpu", smoke=True, **{k: v for k, v in TINY.items() if k.endswith("subset")})
    data = get_data(recipe)
    train_loader, _, test_loader = loaders(data, recipe, torch.device("cpu"))
    calibration = [x for x, _ in list(train_loader)[:2]]
    student = trained["init"].model
    q = quantize.quantize_int8(student, calibration)
    int8, floats = quantize.int8_and_float_parts(q)
    assert int8.get("Conv2d", 0) >= 4 and floats.get("GELU", 0) >= 1   # GELU has no int8 kernel
    path = quantize.save_quantized(q, tmp_path / "q.pt", image_size=32)
    back = quantize.load_quantized(path, build_model("cnn_tiny"))
    x = next(iter(test_loader))[0]
    assert torch.equal(back(x), q(x))
    assert evaluate(back, test_loader) == evaluate(q, test_loader)
    assert abs(evaluate(q, test_loader) - evaluate(student, test_loader)) <= 0.1
    assert measure.size_on_disk(q)["size_mb"] < 0.5 * measure.size_on_disk(student)["size_mb"]


def test_without_a_quantization_backend_the_step_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(quantize, "ENGINES", ())
    ok, why = quantize.availability()
    assert not ok and "no int8 CPU engine" in why and "skipped" in why
    with pytest.raises(quantize.QuantizationUnavailable, match="skipped"):
        quantize.quantize_int8(build_model("cnn_tiny"), [torch.zeros(1, 3, 32, 32)])
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "torch.ao.quantization.quantize_fx", None)   # a PyTorch without FX
    ok, why = quantize.availability()
    assert not ok and "no FX post-training quantization" in why and "torchao" in why


def test_measurements_come_from_the_saved_file_and_count_only_non_zeros():
    torch.manual_seed(0)
    dense = build_model("cnn_tiny").eval()
    sparse = build_model("cnn_tiny").eval()
    prune.MaskedWeights(sparse, prune.magnitude_masks(sparse, 0.8)).remove()
    a, b = measure.size_on_disk(dense), measure.size_on_disk(sparse)
    assert a["size_mb"] == pytest.approx(b["size_mb"], rel=0.01), "zeros in a dense tensor weigh the same"
    assert b["gzip_mb"] < 0.7 * a["gzip_mb"], "but compress"
    weights = sum(m.weight.numel() for _, m in prune.prunable_layers(dense))
    assert measure.nonzero_parameters(dense) - measure.nonzero_parameters(sparse) == pytest.approx(0.8 * weights, abs=2)
    speed = measure.speed(dense, 32, 8, quick=True)
    assert speed["latency_ms"] > 0 and speed["throughput"] > 0
    row = measure.row("student", dense, 0.5, image_size=32, throughput_batch=8, quick=True, smoke=True)
    assert "SMOKE" in measure.table([row]) and "student" in measure.table([row])
    assert "SMOKE" in measure.figure([row])._suptitle.get_text()
