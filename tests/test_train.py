"""The training loop: a short distillation on synthetic data must learn."""
import pytest
import torch

from kdtp.batches import DeviceLoader
from kdtp.data import load_cifar10
from kdtp.env import pick_precision
from kdtp.distillers import FeatureKD, LogitKD, Strategy
from kdtp.models import build_model
from kdtp.train import evaluate, fit, make_optimizer, make_scheduler


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return load_cifar10(tmp_path_factory.mktemp("d"), synthetic=True, train_subset=2048,
                        val_subset=256, test_subset=256)


# the precision fit picks on this machine: bf16 where the CPU does it natively (AMX), fp32
# elsewhere; forcing bf16 on a CPU without it emulates it ~10x slower and tests nothing more
# (tests/test_precision.py checks bf16 itself)
PRECISION = pick_precision(torch.device("cpu"))


def _loaders(d, batch=64):
    return (DeviceLoader(d.train_x, d.train_y, batch, train=True),
            DeviceLoader(d.val_x, d.val_y, 256, train=False),
            DeviceLoader(d.test_x, d.test_y, 256, train=False))


def _train(strategy, d, epochs=2, lr=0.03):
    train, val, _ = _loaders(d)
    params = [p for p in strategy.parameters() if p.requires_grad]
    opt = make_optimizer(params, "sgd", lr, 5e-4)
    sched = make_scheduler(opt, "onecycle", epochs * len(train), 0.25)
    return fit(strategy, train, val, optimizer=opt, scheduler=sched, epochs=epochs,
               precision=PRECISION, progress=False)


def test_short_distillation_beats_chance_and_keeps_the_teacher_frozen(small_data):
    torch.manual_seed(0)
    # the smallest pair that learns in two epochs (cnn_large -> cnn_small took a minute of CI)
    teacher = build_model("cnn_small").to(memory_format=torch.channels_last)
    state = _train(Strategy(teacher), small_data)
    assert state.best_val_acc > 0.5

    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model("cnn_tiny").to(memory_format=torch.channels_last)
    kd = LogitKD(student, teacher, temperature=4.0, alpha=0.5)
    state = _train(kd, small_data)
    _, _, test = _loaders(small_data)
    acc = evaluate(student, test, PRECISION)
    assert acc > 0.3, f"distilled student at {acc:.3f}, chance is 0.10"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    h = state.history
    assert {"train_ce", "train_kd", "train_loss", "train_acc", "val_acc", "lr", "seconds"} <= set(h)
    assert len(h["val_acc"]) == 2 and state.best_val_acc == max(h["val_acc"])
    assert "teacher" not in dict(kd.named_modules())                   # never saved or trained


def test_best_weights_are_those_of_the_best_validation_epoch(small_data):
    torch.manual_seed(1)
    model = build_model("cnn_tiny")
    state = _train(Strategy(model), small_data, epochs=3)
    model.load_state_dict(state.best_model)
    _, val, _ = _loaders(small_data)
    assert evaluate(model, val, PRECISION) == pytest.approx(state.best_val_acc)


def test_feature_kd_trains_an_adapter_that_is_not_part_of_the_student(small_data):
    torch.manual_seed(2)
    teacher = build_model("cnn_small").eval()
    student = build_model("cnn_tiny")
    fkd = FeatureKD(student, teacher, "cnn_tiny", "cnn_small", image_size=32)
    adapter_before = fkd.hint.adapter[0].weight.clone()
    state = _train(fkd, small_data, epochs=1)
    assert "train_feat" in state.history
    assert not torch.equal(adapter_before, fkd.hint.adapter[0].weight)
    assert not any(k.startswith("hint") for k in student.state_dict())
    assert set(fkd.extra_state()) and all(k.startswith("hint.") for k in fkd.extra_state())


def test_correct_per_image_is_what_evaluate_scores():
    """The per-image view behind paired comparisons: same predictions as the accuracy, flip TTA included."""
    from kdtp.batches import DeviceLoader
    from kdtp.train import correct_per_image, evaluate

    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50,))
    loader = DeviceLoader(images, labels, 16, train=False, image_size=8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    for flip in (False, True):
        hits = correct_per_image(model, loader, tta_flip=flip)
        assert hits.dtype == torch.bool and hits.shape == (50,)
        assert hits.float().mean().item() == pytest.approx(evaluate(model, loader, tta_flip=flip))
        # by hand: argmax of the (flip-summed) logits against the labels, in the loader's order
        with torch.no_grad():
            xs = torch.cat([x for x, _ in loader])
            logits = model(xs) + (model(xs.flip(3)) if flip else 0)
        assert torch.equal(hits, logits.argmax(1) == labels)
    assert model.training is True   # scored in eval mode, then handed back as it came


def test_the_step_bar_stays_out_of_a_log_but_the_epoch_line_does_not(small_data, capsys, monkeypatch):
    # stderr redirected to a file (a CLI run > log, CI): one epoch line, no bar refreshes
    torch.manual_seed(0)
    train, val, _ = _loaders(small_data)
    model = build_model("cnn_small")
    opt = make_optimizer(list(model.parameters()), "sgd", 0.03, 5e-4)
    sched = make_scheduler(opt, "onecycle", len(train), 0.25)
    fit(Strategy(model), train, val, optimizer=opt, scheduler=sched, epochs=1,
        precision=PRECISION, progress=True, desc="logged")
    out, err = capsys.readouterr()
    assert "logged epoch 1/1:" in out and "it/s" not in err and "%|" not in err

    # a terminal keeps its bar
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    opt = make_optimizer(list(model.parameters()), "sgd", 0.03, 5e-4)
    sched = make_scheduler(opt, "onecycle", len(train), 0.25)
    fit(Strategy(model), train, val, optimizer=opt, scheduler=sched, epochs=1,
        precision=PRECISION, progress=True, desc="shown")
    assert "shown 1/1" in term.getvalue() and "%|" in term.getvalue()
