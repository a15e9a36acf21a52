"""Quantizers: round trips, gradients, exact code conversions, memory linear in bits."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lab.quantizers.codes import MAX_PACK_BITS, bits_for_vocab, pack_bits, unpack_bits
from lab.quantizers import QUANTIZERS, build_quantizer
from lab.quantizers.multiscale import MultiScaleQuantizer

SMALL = {
    "vq": {"name": "vq", "codebook_size": 64, "kmeans_init": False},
    "vq_cos_kmeans": {"name": "vq", "codebook_size": 64, "use_cosine_sim": True, "kmeans_init": True, "code_dim": 4},
    "vq_euclid": {"name": "vq", "codebook_size": 64, "use_cosine_sim": False, "code_dim": None, "kmeans_init": False},
    "lfq": {"name": "lfq", "bits": 6},
    "bsq": {"name": "bsq", "bits": 12},
    "bsq_proj": {"name": "bsq", "bits": 5},
    "fsq": {"name": "fsq", "levels": [8, 5, 5, 5]},
    "fsq_two": {"name": "fsq", "levels": [2, 3, 2]},
}


def test_every_registry_entry_is_covered():
    assert {n["name"] for n in SMALL.values()} == set(QUANTIZERS)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_round_trip_codes_to_latent(key):
    torch.manual_seed(0)
    q = build_quantizer(SMALL[key], dim=12)
    q.train()
    z = torch.randn(8, 12, 4, 4)
    out = q(z)  # training forward (k-means init, EMA updates happen here)
    q.eval()
    out = q(z)
    assert out.z_q.shape == z.shape
    if q.code_kind == "index":
        assert out.codes.dtype == torch.int64 and out.codes.shape == (8, 4, 4)
        assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 2**q.bits
    else:
        assert out.codes.shape == (8, 4, 4, q.bits)
        assert set(out.codes.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(q.codes_to_latent(out.codes), out.z_q, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_gradients_reach_the_input(key):
    torch.manual_seed(0)
    q = build_quantizer(SMALL[key], dim=12).train()
    z = torch.randn(8, 12, 4, 4, requires_grad=True)
    out = q(z)
    (out.z_q.square().sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_bsq_bit_codes_are_signs_on_the_sphere():
    q = build_quantizer({"name": "bsq", "bits": 16}, dim=16).eval()
    z = torch.randn(2, 16, 3, 3)
    out = q(z)
    assert torch.equal(out.codes, (z > 0).permute(0, 2, 3, 1).float())
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 3, 3))


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


@pytest.mark.parametrize("bits", [32, 64])
def test_bsq_memory_is_linear_in_bits(bits):
    """No tensor of 2^bits elements anywhere in a training step (forward and backward)."""
    q = build_quantizer({"name": "bsq", "bits": bits}, dim=16).train()
    z = torch.randn(4, 16, 8, 8, requires_grad=True)
    with _MaxNumel() as m:
        out = q(z)
        (out.z_q.sum() + out.loss).backward()
    assert m.max <= 4 * 8 * 8 * max(bits, 16) * 2  # linear in bits and positions
    assert m.max < 2**20


def test_pack_unpack_exact():
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 7, 16, 31, 32, 33, 62):
        bits = torch.randint(0, 2, (50, d), generator=g).float()
        idx = pack_bits(bits)
        assert idx.dtype == torch.int64 and int(idx.min()) >= 0
        assert torch.equal(unpack_bits(idx, d), bits)
        assert torch.equal(pack_bits(unpack_bits(idx, d)), idx)
    top = torch.tensor([2**62 - 1, 0, 2**61])
    assert torch.equal(pack_bits(unpack_bits(top, 62)), top)
    assert pack_bits(torch.tensor([[1.0, 0.0, 1.0]])).item() == 5  # most significant bit first
    with pytest.raises(ValueError):
        pack_bits(torch.zeros(1, MAX_PACK_BITS + 1))
    assert bits_for_vocab(4096) == 12 and bits_for_vocab(1000) == 10 and bits_for_vocab(2) == 1


def test_lfq_bit_order_matches_library_indices():
    q = build_quantizer({"name": "lfq", "bits": 5}, dim=5).eval()
    z = torch.randn(3, 5, 2, 2)
    out = q(z)
    (_, index, _) = q.lfq(z)
    assert torch.equal(pack_bits(out.codes), index)


@pytest.mark.parametrize("key", ["vq", "lfq", "bsq", "fsq"])
def test_multiscale_codes_rebuild_f_hat(key):
    torch.manual_seed(0)
    msq = MultiScaleQuantizer(build_quantizer(SMALL[key], dim=12), dim=12, scales=(1, 2, 3, 4))
    msq.train()
    f = torch.randn(4, 12, 4, 4)
    msq(f)
    msq.eval()
    out = msq(f, keep_prefixes=True)
    assert [c.shape[1] for c in out.codes] == [1, 2, 3, 4]
    torch.testing.assert_close(msq.codes_to_latent(out.codes), out.f_hat, atol=1e-4, rtol=1e-4)
    for k in range(4):  # a prefix of the codes rebuilds the prefix sum
        torch.testing.assert_close(msq.codes_to_latent(out.codes[: k + 1]), out.prefixes[k], atol=1e-4, rtol=1e-4)


def test_multiscale_scale_k_sees_only_coarser_residuals():
    """The codes of scale k depend on f only through the residual left by scales < k (no peeking)."""
    torch.manual_seed(0)
    msq = MultiScaleQuantizer(build_quantizer({"name": "bsq", "bits": 8}, dim=8), dim=8, scales=(1, 2, 4)).eval()
    f = torch.randn(2, 8, 4, 4)
    out = msq(f)
    # quantize_scale reproduces scale k from f and the prefix sum of earlier scales
    f_hat = torch.zeros_like(f)
    for k in range(3):
        codes, add = msq.quantize_scale(f, f_hat, k)
        assert torch.equal(codes, out.codes[k])
        f_hat = f_hat + add
    torch.testing.assert_close(f_hat, out.f_hat)


@pytest.mark.parametrize("key", ["vq", "vq_cos_kmeans", "vq_euclid"])
def test_vq_fast_inference_lookup_equals_the_library(key):
    """Eval mode uses our matmul+argmax lookup; it must pick the library's codes and latents exactly."""
    torch.manual_seed(0)
    q = build_quantizer(SMALL[key], dim=12)
    q.train()
    for _ in range(3):
        q(torch.randn(16, 12, 4, 4))  # k-means init and EMA updates move the codebook
    q.eval()
    z = torch.randn(8, 12, 5, 5) * 2
    ours = q(z)
    with torch.no_grad():
        z_q, index, loss = q.vq(z)
    assert torch.equal(ours.codes, index)
    torch.testing.assert_close(ours.z_q, z_q)
    assert float(ours.loss) == float(loss.sum()) == 0.0
    assert torch.equal(q._nearest(z, rows=7).codes, index)  # chunking changes nothing


def test_vq_dead_code_threshold_counts_hits_as_the_published_runs_assume():
    """VQ(dead_code_threshold=1.0) re-seeds a code whose EMA usage is below one hit, whatever the other codes'
    usage. vector-quantize-pytorch 1.34 reads the same argument as a ratio of the mean usage (here 1/64 of it), which
    keeps such a code and silently changes every VQ run: pyproject pins the library below 1.34; this fails on it."""
    torch.manual_seed(0)
    q = build_quantizer({"name": "vq", "codebook_size": 64, "code_dim": 4, "kmeans_init": False}, dim=4)
    q.train()
    cb = q.vq._codebook
    cb.cluster_size.data.fill_(10.0)
    cb.cluster_size.data[..., 0] = 0.5  # below one hit: dead under an absolute threshold, alive under the ratio
    before = cb.embed.data.clone()
    cb.expire_codes_(torch.randn(1, 32, 4))
    assert not torch.equal(cb.embed.data[..., 0, :], before[..., 0, :]), "a code under one hit was not re-seeded"
    assert torch.equal(cb.embed.data[..., 1:, :], before[..., 1:, :])


def _bsq_grads(sync: bool, shard: tuple[int, int] | None = None) -> dict:
    """Loss gradients and diversity-term entropies of a BSQ alone and inside a MultiScaleQuantizer, on all 8
    images or on shard (rank, world) of them (then the gradients are averaged over processes, as DDP does)."""
    import torch.distributed as dist

    out = {}
    for kind in ("bsq", "multiscale"):
        torch.manual_seed(0)
        q = build_quantizer({"name": "bsq", "bits": 6, "sync_entropy": sync}, dim=8)
        if kind == "bsq":  # one token per image, like scale 1
            net, x = q, torch.randn(8, 8, 1, 1, generator=torch.Generator().manual_seed(1))
        else:
            net = MultiScaleQuantizer(q, dim=8, scales=[1, 2, 4], learn_gain=False)
            x = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(1))
        net.train()
        res = net(x if shard is None else x.chunk(shard[1])[shard[0]])
        res.loss.backward()
        grad = q.project_in.proj.weight.grad.clone()
        if shard is not None:
            dist.all_reduce(grad)
            grad /= shard[1]
        stats = [res.stats] if kind == "bsq" else res.stats
        out[kind] = (grad, torch.stack([s["batch_entropy"] for s in stats]))
    return out


def _bsq_shard_worker(rank: int, world: int, init_file: str, sync: bool, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = _bsq_grads(sync, (rank, world))
    if rank == 0:
        torch.save(out, out_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("sync", [True, False])
def test_bsq_diversity_term_over_processes_equals_one_process(tmp_path, sync):
    """Two processes with 4 images each give the diversity term and the DDP-averaged gradient of one process
    with all 8 (sync_entropy; inside a MultiScaleQuantizer too, where every scale's marginals travel in one
    all-reduce); without the sync each process sees only its shard's marginals."""
    import torch.multiprocessing as mp

    one = _bsq_grads(sync)
    mp.spawn(_bsq_shard_worker, args=(2, str(tmp_path / "init"), sync, str(tmp_path / "out.pt")), nprocs=2)
    two = torch.load(tmp_path / "out.pt")
    for kind in one:
        same_entropy = torch.allclose(two[kind][1], one[kind][1], atol=1e-6)
        same_grad = torch.allclose(two[kind][0], one[kind][0], atol=1e-6)
        assert same_entropy == sync and same_grad == sync, kind


@pytest.fixture
def two_process_group(monkeypatch):
    """A process group of 2 as rank 0 sees it after ``fit``: the other rank has moved on, so any collective
    would wait forever; here it raises instead."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn
    import vector_quantize_pytorch.lookup_free_quantization as lfq_library

    def collective(*args, **kwargs):
        raise RuntimeError("a collective on rank 0 alone: it would wait forever for the other rank")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter", "barrier"):
        monkeypatch.setattr(dist, name, collective)
    monkeypatch.setattr(dist_nn, "all_reduce", collective)
    monkeypatch.setattr(lfq_library.dist_nn, "all_reduce", collective)  # torch.distributed.nn's own copy
    lfq_library.is_distributed.cache_clear()  # the library caches whether a group exists
    yield
    lfq_library.is_distributed.cache_clear()


@pytest.mark.parametrize("key", sorted(SMALL))
def test_no_quantizer_communicates_inside_local_statistics(key, two_process_group):
    # rank 0 counts a training step's FLOPs after fit inside local_statistics (lab/stages/common.py step_flops):
    # an LFQ tokenizer suite at 2 processes hung there, in the library's all-reduce of its batch entropy
    from lab.quantizers.base import local_statistics

    torch.manual_seed(0)
    q = build_quantizer(SMALL[key], dim=12).train()
    z = torch.randn(8, 12, 4, 4, requires_grad=True)
    with local_statistics():
        out = q(z)
        (out.z_q.square().sum() + out.loss).backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("key", ["lfq", "bsq"])
def test_outside_local_statistics_the_batch_statistics_are_global(key, two_process_group):
    # the control of the test above: in training the entropy terms do communicate (and here raise)
    q = build_quantizer(SMALL[key], dim=12).train()
    with pytest.raises(RuntimeError, match="collective"):
        q(torch.randn(8, 12, 4, 4))
