"""The gradient noise scale: exact estimator algebra, agreement with an analytic value (linear
regression with known noise) and with per-example gradients (a small MLP, torch.func), and the
DDP source (2 gloo ranks, read inside DDP's all-reduce) against the single-process one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port

from packwise.selection import AccumulationNoiseSource, DDPNoiseSource, GradientNoiseScale, noise_scale


def test_estimators_are_exact_on_their_own_equations():
    # E|g_B|^2 = |G|^2 + tr(S)/B with |G|^2 = 2, tr(S) = 12: B = 3 gives 6, B = 12 gives 3
    est = noise_scale(6.0, 3, 3.0, 12)
    assert (est.g2, est.trace_sigma, est.b_simple) == (2.0, 12.0, 6.0)


def test_arrays_average_the_estimators_then_divide():
    est = noise_scale([7.0, 4.0], 3, [3.5, 2.5], 12)  # per entry: (|G|^2, tr) = (21/9, 14) and (18/9, 6)
    assert (est.g2, est.trace_sigma) == ((21 / 9 + 2.0) / 2, 10.0)
    assert est.b_simple == 10.0 / ((21 / 9 + 2.0) / 2)  # 4.615: the ratio of means, not the mean ratio 4.5


def test_non_positive_signal_gives_nan_not_a_huge_number():
    est = noise_scale(3.0, 2, 3.0, 4)
    assert est.g2 == 3.0 and est.trace_sigma == 0.0
    assert math.isnan(noise_scale(3.0, 2, 1.0, 4).b_simple)  # |G|^2 = -1


def test_bad_sizes_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"b_big must be larger than b_small \(the big batch contains the small ones\)"):
        noise_scale(1.0, 8, 1.0, 8)
    with pytest.raises(ValueError, match=r"b_small must be finite and > 0 \(a batch size in tokens or examples\), got 0"):
        noise_scale(1.0, 0, 1.0, 8)
    with pytest.raises(ValueError, match="must be finite squared gradient norms"):
        noise_scale(float("nan"), 1, 1.0, 8)


def test_ema_smooths_numerator_and_denominator_separately_and_resumes_exactly():
    gns = GradientNoiseScale(beta=0.5)
    gns.update(6.0, 3, 3.0, 12)  # (2, 12)
    gns.update(7.0, 3, 3.5, 12)  # (|G|^2, tr) = ((42 - 21) / 9, 3.5 / 0.25) = (7/3, 14)
    assert gns.g2 == (0.25 * 2.0 + 0.5 * (7 / 3)) / 0.75  # bias-corrected: weights 0.25, 0.5 over 0.75
    assert gns.trace_sigma == (0.25 * 12.0 + 0.5 * 14.0) / 0.75
    copy = GradientNoiseScale()
    copy.load_state_dict(json.loads(json.dumps(gns.state_dict())))
    assert (copy.g2, copy.trace_sigma, copy.value, copy.updates) == (gns.g2, gns.trace_sigma, gns.value, 2)
    assert copy.update(5.0, 3, 2.0, 12) == gns.update(5.0, 3, 2.0, 12)


def _accumulated(model, loss_of, micro_batches) -> tuple:
    """One optimizer step over ``micro_batches`` with the loss divided by their count."""
    source = AccumulationNoiseSource(model)
    model.zero_grad()
    for xb, yb in micro_batches:
        (loss_of(model(xb), yb) / len(micro_batches)).backward()
        source.micro_step(xb.shape[0])
    out = source.measure()
    source.close()
    return out


def test_linear_regression_matches_the_analytic_noise_scale():
    """y = x.w* + e, x ~ N(0, I_d), e ~ N(0, s2): at w = w* + d the per-example gradient of
    0.5 (x.w - y)^2 has mean G = d and covariance (|d|^2 + s2) I + d d^T, so
    B_simple = (dim (|d|^2 + s2) + |d|^2) / |d|^2."""
    dim, s2 = 10, 1.0
    gen = torch.Generator().manual_seed(0)
    w_star = torch.randn(dim, generator=gen, dtype=torch.float64)
    delta = torch.randn(dim, generator=gen, dtype=torch.float64)
    delta /= delta.norm()  # |d|^2 = 1
    analytic = (dim * (1.0 + s2) + 1.0) / 1.0
    model = torch.nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    loss_of = lambda pred, y: 0.5 * (pred[:, 0] - y).pow(2).mean()  # noqa: E731
    smalls, bigs = [], []
    gns = GradientNoiseScale(beta=0.99)
    for _ in range(400):  # 400 steps of 8 micro-batches of 8 examples
        micro = []
        for _ in range(8):
            x = torch.randn(8, dim, generator=gen, dtype=torch.float64)
            micro.append((x, x @ w_star + math.sqrt(s2) * torch.randn(8, generator=gen, dtype=torch.float64)))
        small, b_small, big, b_big = _accumulated(model, loss_of, micro)
        assert (b_small, b_big) == (8.0, 64.0)
        smalls.append(small.mean())
        bigs.append(big)
        gns.update(small, b_small, big, b_big)
    whole_run = noise_scale(smalls, 8, bigs, 64)
    assert abs(whole_run.b_simple / analytic - 1) < 0.10
    assert abs(whole_run.g2 - 1.0) < 0.10 and abs(whole_run.trace_sigma / (analytic - 0) - 1) < 0.10
    assert abs(gns.value / analytic - 1) < 0.10  # the smoothed estimate, too


def test_small_mlp_matches_per_example_gradients():
    """A 2-layer MLP at a fixed point: B_simple from micro-step norms vs tr(cov)/|mean|^2 of the
    per-example gradients of the same population (torch.func.vmap over grad)."""
    from torch.func import functional_call, grad, vmap

    gen = torch.Generator().manual_seed(1)
    n, dim, classes = 2048, 16, 4
    x = torch.randn(n, dim, generator=gen)
    teacher = torch.randn(dim, classes, generator=gen)
    y = (x @ teacher + 1.5 * torch.randn(n, classes, generator=gen)).argmax(1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, classes))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one_loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(n, -1) for g in per_example.values()], 1).double()
    mean = flat.mean(0)
    brute = float((flat - mean).pow(2).sum(1).mean() / mean.pow(2).sum())

    loss_of = torch.nn.functional.cross_entropy
    smalls, bigs = [], []
    for _ in range(300):  # i.i.d. draws from the population: 4 micro-batches of 16
        idx = torch.randint(0, n, (4, 16), generator=gen)
        small, b_small, big, b_big = _accumulated(model, loss_of, [(x[i], y[i]) for i in idx])
        smalls.append(small.mean())
        bigs.append(big)
    est = noise_scale(smalls, b_small, bigs, b_big)
    assert abs(est.b_simple / brute - 1) < 0.15


def test_one_micro_step_cannot_measure():
    model = torch.nn.Linear(3, 1)
    assert _accumulated(model, lambda p, y: p.sum(), [(torch.ones(2, 3), None)]) is None


# --- DDP: 2 gloo ranks ---------------------------------------------------------------------------


def _data(steps: int = 3):
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(2, 6, 5, generator=gen), torch.randn(2, 6, generator=gen)) for _ in range(steps)]


def _model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _ddp_worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ddp = DDP(_model())
    source = DDPNoiseSource(ddp)
    gns = GradientNoiseScale(beta=0.5)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    rows = []
    for x, y in _data():
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x[rank])[:, 0], y[rank]).backward()
        measured = source.measure(6)
        rows.append([*measured, gns.update(*measured)])
        opt.step()
    gathered = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out_path).write_text(json.dumps(gathered))
    end_ddp_worker()


def test_ddp_source_equals_the_single_process_estimator(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    rank0, rank1 = json.loads(out.read_text())
    assert rank0 == rank1  # all-reduced quantities: every rank holds the same numbers, bit for bit

    model = _model()  # the same run on one process: the two ranks' batches as 2 micro-steps
    gns = GradientNoiseScale(beta=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_of = lambda pred, y: torch.nn.functional.mse_loss(pred[:, 0], y)  # noqa: E731
    for (x, y), ddp_row in zip(_data(), rank0):
        small, b_small, big, b_big = _accumulated(model, loss_of, [(x[0], y[0]), (x[1], y[1])])
        assert (b_small, b_big) == (ddp_row[1], ddp_row[3]) == (6.0, 12.0)
        assert float(small.mean()) == pytest.approx(ddp_row[0], rel=1e-6)
        assert big == pytest.approx(ddp_row[2], rel=1e-6)
        assert gns.update(small, b_small, big, b_big) == pytest.approx(ddp_row[4], rel=1e-5)
        opt.step()
