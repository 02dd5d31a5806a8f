"""The teacher-logit cache (kdtp.teacher_cache): it answers only a byte-identical batch, a
student trained through it ends with exactly the weights of one trained with the live
teacher, and a bad cache file costs speed, never a run."""
import shutil
import warnings

import pytest
import torch

import kdtp
from kdtp import teacher_cache
from kdtp.models import build_model
from kdtp.runner import train_or_load
from kdtp.teacher_cache import CachedLogits, batch_key, cache_path

pytestmark = pytest.mark.usefixtures("restore_run_registry")   # conftest.py

TINY = dict(recipe="cpu", smoke=True, train_subset=192, val_subset=64, test_subset=64, epochs=2,
            progress=False, verbose=False)


class Counting(torch.nn.Module):
    """A network that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.net = build_model("cnn_tiny", num_classes=10).eval()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_only_an_identical_batch_is_answered_from_the_cache(tmp_path):
    teacher = Counting()
    cached = CachedLogits(teacher, tmp_path / "c.pt")
    x = torch.randn(8, 3, 32, 32)
    first = cached(x)
    again = cached(x.clone())
    assert teacher.calls == 1 and (cached.hits, cached.misses) == (1, 1)
    assert torch.equal(first, again)
    assert batch_key(x.to(torch.float64)) != batch_key(x) != batch_key(x.to(torch.bfloat16))   # same values, other dtype
    for other in (x.flip(3), x[:7], x + 1e-6):   # flipped, shorter, nudged
        assert batch_key(other) != batch_key(x)
        cached(other)
    assert teacher.calls == 4, "a batch that differs in any byte is computed live"
    assert torch.equal(cached(x[:7].clone()), teacher.net(x[:7]))


def test_answers_survive_the_process_and_merge_with_other_writers(tmp_path):
    teacher, path = Counting(), tmp_path / "teacher_logits" / "c.pt"
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    one, two = CachedLogits(teacher, path), CachedLogits(teacher, path)
    one(a)
    one.save()
    two(b)
    two.save()                                  # a second process wrote meanwhile: both answers kept
    want_a, want_b = teacher.net(a), teacher.net(b)
    later = CachedLogits(teacher, path)
    calls = teacher.calls
    assert torch.equal(later(a), want_a) and torch.equal(later(b), want_b)
    assert teacher.calls == calls and (later.hits, later.misses) == (2, 0)


@pytest.mark.parametrize("content", [b"not a torch file", "foreign"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_a_message(tmp_path, content):
    path = tmp_path / "c.pt"
    if content == "foreign":
        torch.save({"format": 99, "entries": {}}, path)
    else:
        path.write_bytes(content)
    teacher = Counting()
    with pytest.warns(RuntimeWarning, match="ignored the teacher-logit cache"):
        cached = CachedLogits(teacher, path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(cached(x), teacher.net(x)) and cached.misses == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached.save()
    assert CachedLogits(teacher, path).entries.keys() == cached.entries.keys(), "rewritten, readable"


def test_a_retrained_teacher_gets_another_file(tmp_path):
    net = build_model("cnn_tiny", num_classes=10)
    before = cache_path(tmp_path, "abc" * 10, net, "fp32", torch.device("cpu"))
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    after = cache_path(tmp_path, "abc" * 10, net, "fp32", torch.device("cpu"))
    assert before != after and before.parent == after.parent == tmp_path / "teacher_logits"
    assert cache_path(tmp_path, "abc" * 10, net, "bf16", torch.device("cpu")) != after


def test_a_student_trained_through_the_cache_ends_with_the_live_teachers_weights(tmp_path, monkeypatch):
    kdtp.Run("tc_teacher", role="teacher", arch="cnn_tiny")
    kdtp.Run("tc_first", method="kd_logits", teacher="tc_teacher", arch="cnn_tiny")
    kdtp.Run("tc_second", method="kd_logits", teacher="tc_teacher", arch="cnn_w4")
    warm, live = tmp_path / "warm", tmp_path / "live"
    first = train_or_load("tc_first", ckpt_dir=warm, **TINY)       # asks the teacher, fills the cache
    files = list((first.path.parent / "teacher_logits").glob("*.pt"))
    assert len(files) == 1
    entries = torch.load(files[0], weights_only=True)["entries"]
    batches = TINY["epochs"] * (TINY["train_subset"] // 64)         # smoke batch 64, drop_last
    assert len(entries) == batches

    # the second student of another width sees the same batches: every one from the cache
    calls = []
    real_forward = teacher_cache.CachedLogits.forward

    def spy(self, x):
        out = real_forward(self, x)
        calls.append((self.hits, self.misses))
        return out
    monkeypatch.setattr(teacher_cache.CachedLogits, "forward", spy)
    second = train_or_load("tc_second", ckpt_dir=warm, **TINY)
    assert calls and calls[-1] == (batches, 0), "every batch of the second student was answered from the cache"

    # the same student with the live teacher (cache off), from the very same teacher checkpoint
    dst = live / first.teacher.path.relative_to(warm)
    dst.parent.mkdir(parents=True)
    shutil.copy(first.teacher.path, dst)
    monkeypatch.setenv("KDTP_TEACHER_CACHE", "0")
    calls.clear()
    reference = train_or_load("tc_second", ckpt_dir=live, **TINY)
    assert not calls and not (dst.parent / "teacher_logits").exists(), "off means off"
    assert reference.config_hash == second.config_hash
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    assert reference.history["train_kd"] == second.history["train_kd"]


def test_feature_methods_keep_their_live_teacher():
    from kdtp.distillers import METHODS
    reads = {name for name, cls in METHODS.items() if cls.reads_teacher_logits}
    assert {"kd_logits", "kd_multi_mean", "kd_multi_confidence", "kd_prune80", "kd_lowrank25"} <= reads
    assert not reads & {"baseline", "kd_features", "kd_attention", "kd_relations", "ps_kd"}
