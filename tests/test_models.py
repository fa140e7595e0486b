"""Tests of ssl_photoz.learn.models: backbones, MoCo v2 (queue, momentum, DDP), the photo-z head
and the
conversion of the authors' checkpoints. All on CPU, small nets except where the paper net is needed.
"""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torchvision
from torch import nn

from ssl_photoz.learn.models import (
    ARCHS,
    RedshiftClassifier,
    build_backbone,
    load_authors_checkpoint,
)
from ssl_photoz.learn.ssl.common import SplitBatchNorm, split_batch_norm
from ssl_photoz.learn.ssl.moco import MoCo, info_nce


def small_backbone():
    return build_backbone("resnet_small", width=8)


# ---------------------------------------------------------------------------------------------
# Backbones


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_shapes(arch):
    torch.manual_seed(0)
    net = build_backbone(arch)
    x = torch.randn(2, 5, 64, 64)
    out = net(x)
    assert out.shape == (2, net.feature_dim)
    # channels_last gives the same features.
    net.eval()
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out_cl = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)


def test_paper_stem():
    net = build_backbone("resnet50")
    assert net.feature_dim == 2048
    conv1 = net.conv1
    assert (conv1.in_channels, conv1.out_channels) == (5, 64)
    assert conv1.kernel_size == (7, 7) and conv1.stride == (1, 1) and conv1.padding == (3, 3)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)


def test_resnet_small_width():
    net = build_backbone("resnet_small", width=16)
    assert net.feature_dim == 128
    assert net(torch.randn(3, 5, 64, 64)).shape == (3, 128)
    with pytest.raises(ValueError, match="only applies to resnet_small"):
        build_backbone("resnet50", width=32)
    with pytest.raises(ValueError, match="unknown arch"):
        build_backbone("vgg16")


def test_backbone_from_config_takes_the_width_of_resnet_small_only():
    """``model.width`` exists for resnet_small alone (the schema requires it there and forbids
    it for the paper archs, which have torchvision's widths)."""
    from ssl_photoz.core.config import with_defaults
    from ssl_photoz.learn.models import backbone_from_config

    small = backbone_from_config(with_defaults("model", {"arch": "resnet_small", "width": 16}))
    assert small.feature_dim == 128 and small.conv1.out_channels == 16
    with torch.device("meta"):
        paper = backbone_from_config(with_defaults("model", {"arch": "resnet18"}))
    assert paper.feature_dim == 512 and paper.conv1.out_channels == 64


# ---------------------------------------------------------------------------------------------
# MoCo


def test_moco_forward_shapes():
    torch.manual_seed(0)
    moco = MoCo(small_backbone, dim=16, queue_size=50)
    logits, labels = moco(torch.randn(6, 5, 64, 64), torch.randn(6, 5, 64, 64))
    assert logits.shape == (6, 51) and logits.dtype == torch.float32
    assert labels.shape == (6,) and labels.dtype == torch.long and not labels.any()
    assert int(moco.queue_ptr) == 6
    assert all(not p.requires_grad for p in moco._key_params())
    assert all(p.requires_grad for p in moco._query_params())
    # |l_pos| <= 1 / T since q and k are unit vectors.
    assert logits[:, 0].abs().max() <= 1 / moco.temperature + 1e-4


def test_info_nce_falls_on_a_tiny_problem():
    torch.manual_seed(0)
    images = torch.randn(32, 5, 64, 64)

    batch, queue_size = 8, 16

    def views(step):
        # Cycle through the images in order: the queue (the last two batches) then never holds a
        # stale key of an image in the current batch, which on so tiny a set would act as a second
        # positive and make the loss climb back up.
        start = (step * batch) % len(images)
        x = images[start : start + batch]
        return x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)

    moco = MoCo(small_backbone, dim=32, queue_size=queue_size, momentum=0.9, temperature=0.2)
    # Fill the queue with real keys first, so the first loss is measured against real negatives.
    with torch.no_grad():
        for step in range(queue_size // batch):
            moco(*views(step))
    # Plain SGD: with momentum 0.9 this toy problem collapses (loss -> log(K + 1)) after its dip.
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for step in range(queue_size // batch, queue_size // batch + 20):
        logits, labels = moco(*views(step))
        loss = info_nce(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert first == pytest.approx(math.log(queue_size + 1), abs=0.1)  # chance level at the start
    assert last < 0.75 * first, losses


def test_info_nce_is_cross_entropy():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    labels = torch.zeros(2, dtype=torch.long)
    expected = -(torch.log_softmax(logits, dim=1)[:, 0]).mean()
    torch.testing.assert_close(info_nce(logits, labels), expected)


def test_queue_pointer_wraps():
    moco = MoCo(small_backbone, dim=3, queue_size=10)
    batches = [torch.randn(4, 3) for _ in range(3)]
    for keys in batches:
        moco.enqueue(keys)
    assert int(moco.queue_ptr) == 2  # 12 keys written into 10 columns
    k1, k2, k3 = batches
    q = moco.queue
    assert torch.equal(q[:, 0:2], k3[2:4].T)  # third batch wrapped around the end
    assert torch.equal(q[:, 2:4], k1[2:4].T)  # what survives of the first batch
    assert torch.equal(q[:, 4:8], k2.T)
    assert torch.equal(q[:, 8:10], k3[0:2].T)


def test_queue_batch_larger_than_queue():
    moco = MoCo(small_backbone, dim=3, queue_size=5)
    moco.enqueue(torch.randn(3, 3))  # ptr 3
    keys = torch.randn(7, 3)
    moco.enqueue(keys)  # 7 more keys: as if written one by one, the last 5 survive
    assert int(moco.queue_ptr) == (3 + 7) % 5
    expected = torch.empty(3, 5)
    for i, key in enumerate(keys):
        expected[:, (3 + i) % 5] = key
    assert torch.equal(moco.queue, expected)


def test_momentum_update_math():
    torch.manual_seed(0)
    m = 0.9
    moco = MoCo(small_backbone, dim=8, queue_size=16, momentum=m)
    with torch.no_grad():
        for p in moco._query_params():
            p.add_(torch.randn_like(p))  # make query and key encoders differ
    old_k = [p.detach().clone() for p in moco._key_params()]
    q = [p.detach().clone() for p in moco._query_params()]
    moco.momentum_update()
    assert len(old_k) == len(q) > 0
    for new, k0, q0 in zip(moco._key_params(), old_k, q, strict=True):
        torch.testing.assert_close(new, m * k0 + (1 - m) * q0, rtol=0, atol=1e-6)


def test_queue_in_state_dict():
    torch.manual_seed(0)
    moco = MoCo(small_backbone, dim=8, queue_size=12)
    moco.enqueue(torch.randn(5, 8))
    state = moco.state_dict()
    assert "queue" in state and "queue_ptr" in state
    torch.manual_seed(1)
    other = MoCo(small_backbone, dim=8, queue_size=12)
    assert not torch.equal(other.queue, moco.queue)
    other.load_state_dict(state)
    assert torch.equal(other.queue, moco.queue)
    assert int(other.queue_ptr) == 5


def _ddp_worker(rank: int, world: int, tmpdir: str, batch: int, steps: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)  # same model and queue on every rank
        moco = MoCo(small_backbone, dim=16, queue_size=32)
        initial_queue = moco.queue.clone()
        # No buffer sync in forward: the queues may then only agree because the keys are gathered.
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = (
            "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        )
        ddp = DistributedDataParallel(moco, **{no_sync: False})
        opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.05)
        torch.manual_seed(100 + rank)  # different data on each rank
        for _ in range(steps):
            im_q, im_k = torch.randn(batch, 5, 64, 64), torch.randn(batch, 5, 64, 64)
            logits, labels = ddp(im_q, im_k)
            loss = info_nce(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

        # Shuffle then unshuffle must return every key to its own sample: check in eval mode,
        # where a sample's features do not depend on the rest of the batch, once the ranks share
        # BN statistics (each rank's key encoder has its own, as buffers are not synced).
        moco.eval()
        for buffer in moco.encoder_k.buffers():
            dist.broadcast(buffer, src=0)
        with torch.no_grad():

            def key_fn(x):
                return torch.nn.functional.normalize(moco.head_k(moco.encoder_k(x)), dim=1)

            im_k = torch.randn(batch, 5, 64, 64)
            shuffled, inverse = moco._shuffle(im_k)
            k_shuffled = moco._unshuffle(key_fn(shuffled), inverse)
            k_direct = key_fn(im_k)
        torch.save(
            {
                "queue": moco.queue,
                "initial_queue": initial_queue,
                "ptr": int(moco.queue_ptr),
                "params": torch.cat([p.detach().flatten() for p in moco.encoder_q.parameters()]),
                "moved": bool((shuffled != im_k).any()),
                "unshuffle_error": float((k_shuffled - k_direct).abs().max()),
            },
            os.path.join(tmpdir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_shuffle_bn_and_gathered_keys(tmp_path):
    world, batch, steps = 2, 4, 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path), batch, steps), nprocs=world, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    written = world * batch * steps  # 2 x batch keys per step
    assert r0["ptr"] == r1["ptr"] == written
    assert torch.equal(r0["queue"], r1["queue"])
    assert not torch.isclose(r0["queue"][:, :written], r0["initial_queue"][:, :written]).any()
    assert torch.equal(r0["queue"][:, written:], r0["initial_queue"][:, written:])
    torch.testing.assert_close(r0["params"], r1["params"])  # DDP kept the query encoders in step
    for r in (r0, r1):
        assert r["unshuffle_error"] < 1e-5
    assert r0["moved"] or r1["moved"]  # the shuffle did exchange samples


# ---------------------------------------------------------------------------------------------
# Photo-z classifier


# ---------------------------------------------------------------------------------------------
# Split BN: MoCo's shuffled BN in a single process


def test_split_batch_norm_normalises_each_sub_batch_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(12, 4, 5, 5) * torch.arange(1, 13.0).view(12, 1, 1, 1)  # scale varies
    split = SplitBatchNorm(4, num_splits=3).train()
    with torch.no_grad():
        split.weight.uniform_(0.5, 2.0)
        split.bias.uniform_(-1.0, 1.0)
    plain = nn.BatchNorm2d(4).train()
    plain.load_state_dict(split.state_dict())
    out = split(x)
    # Each sub-batch of 4 equals plain BN run on that sub-batch alone...
    for k, part in enumerate(x.chunk(3)):
        alone = nn.BatchNorm2d(4).train()
        alone.load_state_dict({**split.state_dict(), "num_batches_tracked": torch.tensor(0)})
        torch.testing.assert_close(out[4 * k : 4 * k + 4], alone(part))
        per_channel = out[4 * k : 4 * k + 4].permute(1, 0, 2, 3).reshape(4, -1)
        torch.testing.assert_close(
            (per_channel.mean(1) - split.bias) / split.weight, torch.zeros(4), atol=1e-5, rtol=0
        )
    # ... and differs from plain BN over the whole batch.
    assert (out - plain(x)).abs().max() > 0.1
    # Running statistics: the mean of the sub-batches' updates; eval mode is plain BN.
    means = torch.stack([0.1 * p.mean((0, 2, 3)) for p in x.chunk(3)]).mean(0)
    torch.testing.assert_close(split.running_mean, means)
    split.eval(), plain.eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))
    with pytest.raises(ValueError, match="does not split into 3 equal sub-batches"):
        split.train()(x[:10])


def test_split_batch_norm_swaps_every_bn_and_keeps_the_state_dict():
    net = small_backbone()
    keys = net.state_dict().keys()
    split = split_batch_norm(small_backbone(), 4)
    bns = [m for m in split.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm) and m.num_splits == 4 for m in bns)
    assert split.state_dict().keys() == keys
    net.load_state_dict(split.state_dict())  # fine-tuning loads it into a plain backbone


def _keys(moco, im_k, generator=None):
    """The keys MoCo enqueues for im_k (read back from the queue)."""
    moco.queue_ptr.zero_()
    moco.train()
    moco(im_k.clone(), im_k, generator=generator)
    return moco.queue[:, : im_k.shape[0]].T.clone()


def test_single_process_moco_shuffles_keys_across_split_bn():
    torch.manual_seed(0)
    images = torch.randn(8, 5, 32, 32) * torch.linspace(0.5, 3, 8).view(8, 1, 1, 1)
    plain = MoCo(small_backbone, dim=16, queue_size=64, momentum=1.0)
    split = MoCo(small_backbone, dim=16, queue_size=64, momentum=1.0, bn_splits=2)
    split.load_state_dict(plain.state_dict())  # the same weights, momentum 1: keys frozen
    assert split.encoder_k.bn1.num_splits == 2 and split.encoder_q.bn1.num_splits == 2
    k_plain = _keys(plain, images)
    gen = torch.Generator().manual_seed(3)
    k_split = _keys(split, images, gen)
    # Split BN changes the keys (statistics of 4 shuffled images, not of the whole batch) ...
    assert (k_split - k_plain).abs().max() > 1e-3
    # ... and they are exactly the keys of the shuffled sub-batches, unshuffled to image order.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    encoder = MoCo(small_backbone, dim=16, queue_size=64).train()
    encoder.load_state_dict(plain.state_dict())
    with torch.no_grad():
        parts = [
            nn.functional.normalize(encoder.head_k(encoder.encoder_k(images[perm[s]])), dim=1)
            for s in (slice(0, 4), slice(4, 8))
        ]
    expected = torch.empty_like(k_split)
    expected[perm] = torch.cat(parts)
    torch.testing.assert_close(k_split, expected, atol=1e-5, rtol=1e-4)
    # A query and its own key never share BN statistics: some positive left its sub-batch.
    assert ((perm[:4] >= 4).any() or (perm[4:] < 4).any()).item()
    # The same generator state replays the same keys (resumed runs stay exact).
    torch.testing.assert_close(_keys(split, images, torch.Generator().manual_seed(3)), k_split)


def test_classifier_expected_z_and_bins():
    clf = RedshiftClassifier(small_backbone())
    assert clf.bin_centers.shape == (180,)
    assert clf.bin_centers[0].item() == pytest.approx(0.4 / 360)
    assert clf.bin_centers[-1].item() == pytest.approx(0.4 - 0.4 / 360)
    assert clf(torch.randn(2, 5, 64, 64)).shape == (2, 180)
    for k in (0, 17, 90, 179):
        logits = torch.full((1, 180), -1e4)
        logits[0, k] = 1e4
        torch.testing.assert_close(clf.expected_z(logits), clf.bin_centers[k : k + 1])
    # A flat softmax gives the middle of the range.
    torch.testing.assert_close(clf.expected_z(torch.zeros(3, 180)), torch.full((3,), 0.2))
    torch.testing.assert_close(clf.pdf(torch.randn(4, 180)).sum(dim=1), torch.ones(4))


def test_z_to_bin_round_trip_and_clamp():
    clf = RedshiftClassifier(small_backbone(), n_bins=180, z_min=0.0, z_max=0.4)
    assert torch.equal(clf.z_to_bin(clf.bin_centers), torch.arange(180))
    edges = torch.linspace(0.0, 0.4, 181)
    inside = edges[:-1] + 1e-6  # just above each lower edge
    assert torch.equal(clf.z_to_bin(inside), torch.arange(180))
    assert clf.z_to_bin(torch.tensor([-0.1, 0.0, 0.4, 0.9])).tolist() == [0, 0, 179, 179]
    assert clf.z_to_bin(torch.tensor([0.1])).dtype == torch.long


def test_parameter_groups():
    clf = RedshiftClassifier(small_backbone())
    groups = clf.parameter_groups(base_lr=0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"]) and lrs["head"] == 0.01
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in clf.parameters()}
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # usable as is


# ---------------------------------------------------------------------------------------------
# The authors' checkpoints


def _authors_resnet50(fc: nn.Module) -> nn.Module:
    """A ResNet50 as in ssl-sky-surveys models/resnet.py, built independently from torchvision."""
    net = torchvision.models.resnet50(weights=None)
    net.conv1 = nn.Conv2d(5, 64, kernel_size=7, stride=1, padding=3, bias=False)
    net.maxpool = nn.Identity()
    net.fc = fc
    return net


def _assert_same(converted_model_state: dict, reference: dict) -> None:
    assert set(converted_model_state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(converted_model_state[key], value), key


def test_load_authors_moco_checkpoint():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))
    authors = _authors_resnet50(mlp)
    with torch.no_grad():  # non-trivial BN statistics, so buffers are checked too
        for m in authors.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    q_state = authors.state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in q_state.items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in q_state.items()})
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    checkpoint = {"epoch": 101, "state_dict": state}

    converted = load_authors_checkpoint(checkpoint, arch="resnet50")
    ours = build_backbone("resnet50")
    ours.load_state_dict(converted)  # strict
    _assert_same(ours.state_dict(), {k: v for k, v in q_state.items() if not k.startswith("fc.")})

    authors.fc = nn.Identity()
    authors.eval()
    ours.eval()
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), authors(x))


def test_load_authors_classifier_checkpoint():
    torch.manual_seed(1)
    authors = _authors_resnet50(nn.Linear(2048, 180))
    ref = authors.state_dict()
    checkpoint = {"model_state": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3}
    converted = load_authors_checkpoint(checkpoint)
    clf = RedshiftClassifier(build_backbone("resnet50"), n_bins=180)
    clf.load_state_dict(converted)  # strict
    assert torch.equal(clf.head.weight, ref["fc.weight"])
    assert torch.equal(clf.head.bias, ref["fc.bias"])
    assert torch.equal(clf.backbone.conv1.weight, ref["conv1.weight"])
    # Without the "module." prefix (a model saved outside DDP) too.
    converted_plain = load_authors_checkpoint(ref)
    assert set(converted_plain) == set(converted)


def test_load_authors_checkpoint_wrong_layout():
    torch.manual_seed(2)
    state = {
        f"module.{k}": v for k, v in _authors_resnet50(nn.Linear(2048, 180)).state_dict().items()
    }
    del state["module.layer3.2.bn2.weight"]
    state["module.extra.weight"] = torch.zeros(3)
    state["module.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # a 3-band stem
    with pytest.raises(ValueError) as err:
        load_authors_checkpoint(state)
    msg = str(err.value)
    assert "missing keys: backbone.layer3.2.bn2.weight" in msg
    assert "unexpected keys: backbone.extra.weight" in msg
    assert "backbone.conv1.weight: (64, 3, 7, 7) != (64, 5, 7, 7)" in msg

    # A resnet18 MoCo checkpoint is not a resnet50 one.
    r18 = torchvision.models.resnet18(weights=None)
    r18.conv1 = nn.Conv2d(5, 64, 7, 1, 3, bias=False)
    moco18 = {f"module.encoder_q.{k}": v for k, v in r18.state_dict().items()}
    with pytest.raises(ValueError, match="MoCo-pretrained resnet50"):
        load_authors_checkpoint(moco18, arch="resnet50")
    assert set(load_authors_checkpoint(moco18, arch="resnet18")) == set(
        build_backbone("resnet18").state_dict()
    )

    with pytest.raises(ValueError, match="neither MoCo-pretrained"):
        load_authors_checkpoint({"module.conv1.weight": torch.zeros(1)})


def test_input_softening_feeds_the_network_asinh_of_the_fluxes():
    import copy

    torch.manual_seed(0)
    soft = [0.02, 0.008, 0.012, 0.018, 0.08]
    stretched = build_backbone("resnet_small", width=16, input_softening=soft).eval()
    raw = build_backbone("resnet_small", width=16).eval()
    assert stretched.state_dict().keys() == raw.state_dict().keys()  # a transform, no weights
    raw.load_state_dict(stretched.state_dict())
    x = torch.rand(3, 5, 32, 32) * torch.logspace(-2, 2, 3).view(3, 1, 1, 1)
    expected = raw(torch.asinh(x / torch.tensor(soft).view(1, 5, 1, 1)))
    torch.testing.assert_close(stretched(x), expected)
    torch.testing.assert_close(copy.deepcopy(stretched)(x), expected)  # MoCo's key encoder
    moco = MoCo(lambda: build_backbone("resnet_small", width=16, input_softening=soft), dim=8)
    assert moco.encoder_k.input_softening.flatten().tolist() == pytest.approx(soft)
    with pytest.raises(ValueError, match="5 positive values"):
        build_backbone("resnet_small", width=16, input_softening=[1.0, 0.0, 1.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# BYOL


def _byol(**kwargs):
    from ssl_photoz.learn.ssl.byol import BYOL

    sizes = {"dim": 16, "projector_hidden": 32, "predictor_hidden": 32}
    return BYOL(small_backbone, **sizes | kwargs)


def test_byol_loss_is_two_minus_twice_the_cosine():
    from ssl_photoz.learn.ssl.byol import byol_loss

    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # cos 1 and 0
    torch.testing.assert_close(byol_loss(p, z), torch.tensor(0.5 * (0.0 + 2.0)))
    z.requires_grad_(True)
    byol_loss(p.requires_grad_(True), z).backward()
    assert z.grad is None or not z.grad.any()  # no gradient reaches the target


def test_byol_tau_rises_from_its_base_to_one_along_a_cosine():
    from ssl_photoz.learn.ssl.byol import target_tau

    assert target_tau(0.99, 0, 100) == pytest.approx(0.99)
    assert target_tau(0.99, 50, 100) == pytest.approx(0.995)
    assert target_tau(0.99, 100, 100) == pytest.approx(1.0)
    taus = [target_tau(0.9, k, 10) for k in range(11)]
    assert taus == sorted(taus)


def test_byol_loss_falls_on_a_tiny_problem():
    from ssl_photoz.learn.ssl.byol import byol_loss, target_tau

    torch.manual_seed(0)
    images = torch.randn(16, 5, 64, 64)
    byol = _byol()
    params = [p for p in byol.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in byol._target_params())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for step in range(20):
        a = images + 0.3 * torch.randn_like(images)
        b = images + 0.3 * torch.randn_like(images)
        p_a, p_b, z_a, z_b = byol(a, b)
        loss = byol_loss(p_a, z_b) + byol_loss(p_b, z_a)
        opt.zero_grad()
        loss.backward()
        opt.step()
        byol.update_target(target_tau(0.9, step + 1, 20))
        losses.append(loss.item())
    assert 0 <= min(losses) and max(losses) <= 8  # 2 x (2 - 2 cos)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, losses


def test_byol_target_is_the_ema_of_the_online_network_after_a_step():
    """One training step through the method (loss, SGD, after_step): the online network moved by
    its gradient, the target by tau_1 * target + (1 - tau_1) * online, and by nothing else."""
    from ssl_photoz.learn.ssl import get
    from ssl_photoz.learn.ssl.byol import target_tau

    torch.manual_seed(0)
    method = get("byol")
    byol = _byol()
    with torch.no_grad():
        for p in byol._online_params():
            p.add_(0.1 * torch.randn_like(p))  # make online and target differ
    old_target = [p.detach().clone() for p in byol._target_params()]
    old_online = [p.detach().clone() for p in byol._online_params()]
    opt = torch.optim.SGD([p for p in byol.parameters() if p.requires_grad], lr=0.1)
    loss = method.training_loss(byol, torch.randn(6, 5, 64, 64), torch.randn(6, 5, 64, 64), None)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in byol._target_params())
    opt.step()
    cfg = {"byol": {"tau_base": 0.9}}
    method.after_step(byol, 0, 10, cfg)
    tau = target_tau(0.9, 1, 10)
    new_online = [p.detach() for p in byol._online_params()]
    assert any(not torch.equal(a, b) for a, b in zip(new_online, old_online, strict=True))
    for new, t0, o1 in zip(byol._target_params(), old_target, new_online, strict=True):
        torch.testing.assert_close(new, tau * t0 + (1 - tau) * o1, rtol=0, atol=1e-6)
    assert method.backbone(byol) is byol.online_encoder
    assert method.embedding_parts(byol) == (byol.online_encoder, byol.online_projector)
