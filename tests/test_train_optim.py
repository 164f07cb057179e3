"""Optimizers and schedules: LR multipliers against hand-computed values, Newton–Schulz against the SVD's
polar factor, Muon's update against the orthogonalised Nesterov momentum, and the parameter split
(Muon: hidden matrices; AdamW: embeddings, norms, head)."""

from __future__ import annotations

import math

import pytest
import torch

from fastgpt.model import GPT, GPTConfig
from fastgpt.train.config import TrainConfig
from fastgpt.train.optim import Muon, build_optimizer, lr_multiplier, newton_schulz_orthogonalize

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=100)
    return TrainConfig(**{**base, **kw})


def test_warmup_is_linear_from_the_first_step():
    cfg = _cfg()
    assert [lr_multiplier(cfg, s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("progress, expected", [(0.0, 1.0), (0.5, 0.55), (1.0, 0.1), (1.5, 0.1)])
def test_cosine_goes_from_lr_to_min_lr(progress, expected):
    # 0.1 + 0.9 * (1 + cos(pi * p)) / 2
    assert lr_multiplier(_cfg(schedule="cosine"), 50, progress) == pytest.approx(expected)


@pytest.mark.parametrize("progress, expected", [(0.3, 1.0), (0.8, 1.0), (0.9, 0.55), (1.0, 0.1)])
def test_wsd_holds_then_decays_linearly_over_the_last_fraction(progress, expected):
    cfg = _cfg(schedule="wsd", wsd_decay_frac=0.2)
    assert lr_multiplier(cfg, 50, progress) == pytest.approx(expected)


def test_constant_stays_at_lr_after_warmup():
    cfg = _cfg(schedule="constant")
    assert lr_multiplier(cfg, 2, 0.0) == 0.75
    assert {lr_multiplier(cfg, s, s / 100) for s in range(4, 100)} == {1.0}


@pytest.mark.parametrize("shape", [(96, 40), (40, 96), (64, 64 + 17)])
def test_newton_schulz_approximates_the_polar_factor(shape):
    """``U V^T`` of ``G = U S V^T``: the iteration keeps the singular vectors and maps every singular
    value into roughly [0.6, 1.25] (the quintic's coefficients trade exactness for speed)."""
    g = torch.randn(*shape, dtype=torch.float64).float()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    out = newton_schulz_orthogonalize(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    inner = u.T @ out @ vh.T  # diagonal if the singular vectors were kept
    diag = torch.diagonal(inner)
    off = inner - torch.diag(diag)
    assert off.abs().max() < 0.05
    assert diag.min() > 0.6 and diag.max() < 1.25
    polar = u @ vh
    cos = torch.nn.functional.cosine_similarity(out.flatten(), polar.flatten(), dim=0)
    assert cos > 0.97


def test_muon_step_is_orthogonalised_nesterov_momentum():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(48, 32))
    lr, beta = 0.02, 0.95
    opt = Muon([{"params": [w], "lr": lr, "momentum": beta, "use_muon": True}])
    buf = torch.zeros_like(w)
    for _ in range(3):
        before = w.detach().clone()
        grad = torch.randn_like(w)
        w.grad = grad.clone()
        opt.step()
        buf = beta * buf + (1 - beta) * grad  # EMA momentum
        nesterov = (1 - beta) * grad + beta * buf
        u, _, vh = torch.linalg.svd(nesterov, full_matrices=False)
        expected = -lr * math.sqrt(48 / 32) * (u @ vh)
        update = w.detach() - before
        cos = torch.nn.functional.cosine_similarity(update.flatten(), expected.flatten(), dim=0)
        assert cos > 0.97
        assert update.norm() / expected.norm() == pytest.approx(1.0, abs=0.2)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [torch.nn.Parameter(torch.randn(8))], "use_muon": True}])


def _untied_model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(
        "tiny", n_layer=2, n_embd=64, n_head=2, n_kv_head=1, vocab_size=300, tie_embeddings=False
    )
    return GPT(cfg)


def test_muon_gets_hidden_matrices_and_adamw_the_rest():
    model = _untied_model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", max_steps=1, lr=1e-3, muon_lr=0.02))
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    on_adamw = {names[id(p)] for g in opt.param_groups if not g["use_muon"] for p in g["params"]}
    assert on_muon == {n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")}
    assert on_adamw == set(names.values()) - on_muon
    assert {"wte.weight", "lm_head.weight", "final_norm.weight"} <= on_adamw
    assert {g["base_lr"] for g in opt.param_groups if g["use_muon"]} == {0.02}
    assert {g["base_lr"] for g in opt.param_groups if not g["use_muon"]} == {1e-3}


def test_muons_adamw_groups_step_exactly_like_torch_adamw():
    """Groups that Muon leaves to AdamW (embeddings, head, norms) get torch.optim.AdamW's updates: here
    every group is an AdamW group, over three steps."""
    ours, ref = _untied_model(), _untied_model()
    groups = ours.param_groups(0.1)
    for g in groups:
        g.update(use_muon=False, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = Muon(groups, fused=True)
    reference = torch.optim.AdamW(ref.param_groups(0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
    x = torch.randint(0, 300, (2, 16))
    for _ in range(3):
        for model, o in ((ours, opt), (ref, reference)):
            o.zero_grad()
            model(x, x).backward()
            o.step()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_both_optimizers_fit_a_small_regression(name):
    """A hundred steps on a linear least-squares problem through a 2-layer MLP: the loss falls."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(
                torch.nn.Linear(16, 32, bias=False), torch.nn.Linear(32, 4, bias=False)
            )
            self.bias = torch.nn.Parameter(torch.zeros(4))

        def param_groups(self, weight_decay):
            return [
                {"params": list(self.blocks.parameters()), "weight_decay": 0.0, "kind": "matrix"},
                {"params": [self.bias], "weight_decay": 0.0, "kind": "vector"},
            ]

        def forward(self, x):
            return self.blocks(x) + self.bias

    net = Net()
    x, w_true = torch.randn(256, 16), torch.randn(16, 4)
    y = x @ w_true
    opt = build_optimizer(net, TrainConfig(optimizer=name, max_steps=1, lr=1e-2, muon_lr=0.02))
    first = None
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


# --- Muon on flat ZeRO-style partitions, without DeepSpeed: 2 gloo ranks in spawned processes --------
SHAPES = [(5, 7), (8, 3), (4, 4), (6, 9)]  # tall and wide; 165 elements


def _zero_layout_worker(rank: int, world: int, port: int, contiguous: bool, queue) -> None:
    import torch.distributed as tdist

    from fastgpt.train.optim import ZeroMuonLayout, _Matrix

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        weights = [torch.randn(*s) for s in SHAPES]
        grads = [[torch.randn(*s) for s in SHAPES] for _ in range(3)]
        # the reference: whole matrices, the single-process Muon
        whole = [torch.nn.Parameter(w.clone()) for w in weights]
        ref = Muon([{"params": whole, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "use_muon": True}])
        matrices = []
        if contiguous:  # ZeRO-1/2: one flat buffer (padding between matrices and at the end), split in 2
            offset, chunks, gchunks = 0, [], [[] for _ in grads]
            for i, (s, w) in enumerate(zip(SHAPES, weights)):
                matrices.append(_Matrix(s, offset))
                pad = 3 if i < len(SHAPES) - 1 else 0
                chunks += [w.reshape(-1), torch.zeros(pad)]
                for k, g in enumerate(grads):
                    gchunks[k] += [g[i].reshape(-1), torch.zeros(pad)]
                offset += w.numel() + pad
            size = -(-offset // world)
            full = torch.cat(chunks + [torch.zeros(size * world - offset)])
            flat = full[rank * size : (rank + 1) * size].clone()
            grad_flats = [
                torch.cat(gc + [torch.zeros(size * world - offset)])[rank * size : (rank + 1) * size]
                for gc in gchunks
            ]
        else:  # ZeRO-3: every rank holds ceil(numel / world) elements of every matrix
            offset, parts, gparts = 0, [], [[] for _ in grads]
            for i, (s, w) in enumerate(zip(SHAPES, weights)):
                part = -(-w.numel() // world)
                matrices.append(_Matrix(s, offset, part))
                padded = torch.cat([w.reshape(-1), torch.zeros(part * world - w.numel())])
                parts.append(padded[rank * part : (rank + 1) * part])
                for k, g in enumerate(grads):
                    gp = torch.cat([g[i].reshape(-1), torch.zeros(part * world - w.numel())])
                    gparts[k].append(gp[rank * part : (rank + 1) * part])
                offset += part
            size, flat = offset, torch.cat(parts)
            grad_flats = [torch.cat(gp) for gp in gparts]
        shard = torch.nn.Parameter(flat)
        opt = Muon(
            [{"params": [whole[0]], "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "use_muon": True}]
        )
        opt.param_groups[0]["params"] = [shard]  # as ZeRO does after construction
        opt._zero_layouts = {id(shard): ZeroMuonLayout(matrices, size, rank, world, None, contiguous)}
        for k, g in enumerate(grads):
            for p, gi in zip(whole, g):
                p.grad = gi.clone()
            ref.step()
            shard.grad = grad_flats[k].clone()
            opt.step()
        # this rank's slice of the reference weights
        if contiguous:
            chunks = []
            for i, p in enumerate(whole):
                chunks += [p.detach().reshape(-1), torch.zeros(3 if i < len(SHAPES) - 1 else 0)]
            full = torch.cat(chunks + [torch.zeros(size * world - sum(c.numel() for c in chunks))])
            expected = full[rank * size : (rank + 1) * size]
        else:
            expected = torch.cat(
                [
                    torch.cat([p.detach().reshape(-1), torch.zeros(m.partition * world - m.numel)])[
                        rank * m.partition : (rank + 1) * m.partition
                    ]
                    for p, m in zip(whole, matrices)
                ]
            )
        queue.put((rank, float((shard.detach() - expected).abs().max())))
    finally:
        tdist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.parametrize("contiguous", [True, False], ids=["zero12", "zero3"])
def test_sharded_muon_step_equals_the_whole_matrix_step(contiguous):
    """Muon's ZeRO path on 2 gloo ranks, partitions built by hand as DeepSpeed lays them out (matrices
    cut by the rank boundary, padding between and after them; ZeRO-3's per-matrix slices with a padded
    last share): 3 steps equal the single-process Muon on whole matrices."""
    import torch.multiprocessing as mp
    from train_support import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_zero_layout_worker, args=(r, 2, port, contiguous, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = dict(queue.get(timeout=5) for _ in procs)
    assert results.keys() == {0, 1}
    assert max(results.values()) <= 1e-6, results
