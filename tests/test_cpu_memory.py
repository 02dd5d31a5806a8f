"""kdtp.cpu_memory: glibc keeps freed blocks; the switch, where it is called, and that nothing computed changes."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kdtp import cpu_memory, train

ON_GLIBC = cpu_memory._glibc() is not None


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.setenv("KDTP_KEEP_FREED_MEMORY", "0")
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: pytest.fail("glibc must not be touched when switched off"))
    assert cpu_memory.keep_freed_memory() is False


def test_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.delenv("KDTP_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory._glibc() is None
    assert cpu_memory.keep_freed_memory() is False


def test_set_once_per_process(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.delenv("KDTP_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setattr(cpu_memory, "_glibc", FakeLibc)
    assert cpu_memory.keep_freed_memory() is True
    assert cpu_memory.keep_freed_memory() is True
    assert calls == [(cpu_memory.M_TRIM_THRESHOLD, cpu_memory.TRIM_ABOVE),
                     (cpu_memory.M_MMAP_THRESHOLD, cpu_memory.KEEP_BELOW)]


def test_refused_by_glibc_is_off(monkeypatch):
    class RefusingLibc:
        def mallopt(self, param, value):
            return 0

    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.delenv("KDTP_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setattr(cpu_memory, "_glibc", RefusingLibc)
    assert cpu_memory.keep_freed_memory() is False


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_glibc_accepts_the_setting():
    assert cpu_memory.keep_freed_memory() is True


def test_training_and_scoring_on_the_cpu_turn_it_on(monkeypatch):
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)

    class Batches(list):
        device = torch.device("cpu")

    loader = Batches([(torch.randn(4, 4), torch.randint(0, 2, (4,)))])
    train.correct_per_image(torch.nn.Linear(4, 2), loader)
    assert calls, "scoring on the CPU keeps freed memory"


_TRAIN = textwrap.dedent("""
    import hashlib, torch, torch.nn.functional as F
    from kdtp.cpu_memory import keep_freed_memory
    from kdtp.models import build_model
    print(keep_freed_memory())
    torch.manual_seed(0)
    model = build_model("air_w4", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):   # blocks of several MB: glibc would mmap them by default
        x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), torch.randint(0, 10, (64,)))
        opt.zero_grad(); loss.backward(); opt.step()
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().contiguous().numpy().tobytes())
    print(h.hexdigest())
""")


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_the_same_weights_with_and_without(tmp_path):
    def run(keep: str) -> list[str]:
        env = {"KDTP_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _TRAIN], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}).stdout.split()
        return out[-2:]
    off, on = run("0"), run("1")
    assert (off[0], on[0]) == ("False", "True")
    assert off[1] == on[1], "keeping freed memory changed the trained weights"
