"""Independent references for the KD losses, written from the papers' formulas.

For the tests of ``kdtp.losses`` only. Nothing here imports ``kdtp`` or uses
``torch.nn.functional``: softmax, cross-entropy, KL, the Huber loss, L2 normalisation and
distances are spelled out, and RKD's pairs and triplets are enumerated explicitly (no
Gram-matrix shortcut, no diagonal to mask). Meant for float64 inputs; differentiable, so
the tests compare gradients as well as values.
"""
from __future__ import annotations

import itertools

import torch


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(exp(x_c) / sum_k exp(x_k))``, shifted by the row max for stability."""
    m = x.max(dim=1, keepdim=True).values.detach()
    return (x - m) - (x - m).exp().sum(dim=1, keepdim=True).log()


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. 2015: ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_t || p_s)``, batch means.

    CE with label smoothing ``eps`` targets ``(1 - eps) * onehot(y) + eps / C``.
    ``p_t = softmax(t / T)``, ``p_s = softmax(s / T)``; ``KL(p||q) = sum_c p_c log(p_c / q_c)``.
    """
    batch, classes = s.shape
    log_p = log_softmax(s)
    ce = 0.0
    for b in range(batch):
        nll = -log_p[b, int(y[b])]
        uniform = -log_p[b].sum() / classes
        ce = ce + (1 - label_smoothing) * nll + label_smoothing * uniform
    ce = ce / batch
    log_pt, log_ps = log_softmax(t / temperature), log_softmax(s / temperature)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum() / batch
    return alpha * ce + (1 - alpha) * temperature ** 2 * kl


def attention(feature: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: ``Q = sum_c |A_c|^2`` (a *sum* over channels), flattened,
    divided by its L2 norm."""
    q = (feature.abs() ** 2).sum(dim=1).reshape(feature.shape[0], -1)
    return q / (q ** 2).sum(dim=1, keepdim=True).sqrt()


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """The authors' ``at_loss``: mean over batch and positions of squared differences."""
    diff = attention(student_map) - attention(teacher_map)
    return (diff ** 2).sum() / diff.numel()


def huber(a: torch.Tensor) -> torch.Tensor:
    """Huber loss with delta = 1 (what RKD calls l_delta): a^2/2 inside [-1, 1], |a| - 1/2 outside."""
    return torch.where(a.abs() < 1, 0.5 * a ** 2, a.abs() - 0.5)


def _norm(v: torch.Tensor) -> torch.Tensor:
    return (v ** 2).sum(dim=1).sqrt()


def rkd_terms(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Park et al. 2019, unweighted ``(L_D, L_A)`` on (N, D) embeddings.

    ``psi_D(i, j) = ||x_i - x_j|| / mu``, ``mu`` the mean of ``||x_i - x_j||`` over the pairs
    of distinct examples; ``psi_A(i, j, k) = <e_ij, e_kj>``, ``e_ij = (x_i - x_j)/||x_i - x_j||``.
    The paper sums the Huber losses over the distinct pairs / triplets; the authors' code
    averages over all N^2 / N^3 index tuples, in which the degenerate ones are 0: so the
    sums are divided by N^2 and N^3.
    """
    n = s.shape[0]
    i, j = torch.tensor(list(itertools.permutations(range(n), 2))).T

    def psi_d(x):
        d = _norm(x[i] - x[j])
        return d / d.mean()

    loss_d = huber(psi_d(s) - psi_d(t)).sum() / n ** 2

    i, j, k = torch.tensor(list(itertools.permutations(range(n), 3))).T

    def psi_a(x):
        u, v = x[i] - x[j], x[k] - x[j]
        return (u * v).sum(dim=1) / (_norm(u) * _norm(v))

    loss_a = huber(psi_a(s) - psi_a(t)).sum() / n ** 3
    return loss_d, loss_a
