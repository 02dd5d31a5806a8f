"""The teacher-logit cache (kdtp.teacher_cache): it answers a batch only when it holds every
image byte for byte, a student trained through it (another width, or another seed under
shared augmentation) ends with exactly the weights of one trained with the live teacher,
and a bad cache file costs speed, never a run."""
import shutil
import warnings

import pytest
import torch

import kdtp
from kdtp import teacher_cache
from kdtp.models import build_model
from kdtp.runner import train_or_load
from kdtp.teacher_cache import CachedLogits, cache_path, row_keys

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


def spy_on_the_cache(monkeypatch) -> list[tuple[int, int]]:
    """(hits, misses) of the cache after each of its batches, for the tests below."""
    calls = []
    real_forward = teacher_cache.CachedLogits.forward

    def spy(self, x):
        out = real_forward(self, x)
        calls.append((self.hits, self.misses))
        return out
    monkeypatch.setattr(teacher_cache.CachedLogits, "forward", spy)
    return calls


def test_a_batch_is_answered_only_when_every_image_is_known_byte_for_byte(tmp_path):
    teacher = Counting()
    cached = CachedLogits(teacher, tmp_path / "c.pt")
    x = torch.randn(8, 3, 32, 32)
    first = cached(x)
    again = cached(x.clone())
    assert teacher.calls == 1 and (cached.hits, cached.misses) == (1, 1)
    assert torch.equal(first, again)
    # the same images in another order and another grouping: answered image by image
    perm = torch.randperm(8)
    assert torch.equal(cached(x[perm]), first[perm]) and torch.equal(cached(x[2:5]), first[2:5])
    assert teacher.calls == 1
    assert row_keys(x.to(torch.float64)) != row_keys(x) != row_keys(x.to(torch.bfloat16))   # same values, other dtype
    assert len(set(row_keys(x))) == 8
    nudged = x.clone()
    nudged[3, 1, 2, 2] += 1e-6
    for other in (x.flip(3), nudged, torch.cat([x[:7], torch.randn(1, 3, 32, 32)])):   # one image differs
        cached(other)
    assert teacher.calls == 4, "a batch with any unknown image is computed live"
    assert torch.equal(cached(x[:7].clone()), teacher.net(x[:7]))
    assert teacher.calls == 4, "seven known images in a batch of their own: from the cache"


def test_a_frozen_teachers_answer_for_an_image_does_not_depend_on_its_batch():
    """What serving images across batches rests on (on a CPU): bit-identical logits."""
    from kdtp.env import pick_precision
    from kdtp.train import autocast
    torch.manual_seed(0)
    net = build_model("air_small", num_classes=10).eval().to(memory_format=torch.channels_last)
    a, b = torch.randn(64, 3, 32, 32), torch.randn(64, 3, 32, 32)
    mixed = torch.cat([a[:20], b[20:]])
    perm = torch.randperm(64)
    for precision in {"fp32", pick_precision(torch.device("cpu"))}:
        with torch.no_grad(), autocast(torch.device("cpu"), precision):
            whole, part, shuffled = (net(t.contiguous(memory_format=torch.channels_last)) for t in (a, mixed, a[perm]))
        assert torch.equal(whole[:20], part[:20]) and torch.equal(whole[perm], shuffled), precision


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
    payload = torch.load(files[0], weights_only=True)
    batches = TINY["epochs"] * (TINY["train_subset"] // 64)         # smoke batch 64, drop_last
    # one answer per image shown (an image cropped and flipped alike in both epochs is one)
    assert 0.9 * batches * 64 <= len(payload["keys"]) == len(payload["logits"]) <= batches * 64

    # the second student of another width sees the same batches: every one from the cache
    calls = spy_on_the_cache(monkeypatch)
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


def test_under_shared_augmentation_another_seed_gets_every_answer_and_the_live_weights(tmp_path, monkeypatch):
    """06's extra pairs and a sweep's seeds: other order, other batches, the same images."""
    kdtp.Run("tcs_teacher", role="teacher", arch="cnn_tiny")
    kdtp.Run("tcs_student", method="kd_logits", teacher="tcs_teacher", arch="cnn_tiny")
    # 200 images in batches of 64: 8 left out each epoch, as 45,000 in 1,024 leave 968
    shared = dict(TINY, shared_augmentation=True, train_subset=200)
    warm, live = tmp_path / "warm", tmp_path / "live"
    first = train_or_load("tcs_student", ckpt_dir=warm, seed=0, **shared)
    calls = spy_on_the_cache(monkeypatch)
    other_seed = train_or_load("tcs_student", ckpt_dir=warm, seed=1, **shared)
    batches = TINY["epochs"] * (200 // 64)
    assert other_seed.config_hash != first.config_hash
    assert calls and calls[-1] == (batches, 0), "seed 1's batches were all answered from seed 0's images"

    dst = live / first.teacher.path.relative_to(warm)
    dst.parent.mkdir(parents=True)
    shutil.copy(first.teacher.path, dst)
    monkeypatch.setenv("KDTP_TEACHER_CACHE", "0")
    reference = train_or_load("tcs_student", ckpt_dir=live, seed=1, **shared)
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, other_seed.model.state_dict()[k]), k

    # without shared augmentation another seed sees other images: the teacher is asked again
    monkeypatch.delenv("KDTP_TEACHER_CACHE")
    calls.clear()
    train_or_load("tcs_student", ckpt_dir=warm, seed=2, **dict(shared, shared_augmentation=False))
    train_or_load("tcs_student", ckpt_dir=warm, seed=3, **dict(shared, shared_augmentation=False))
    assert calls[-1][0] < batches // 2
