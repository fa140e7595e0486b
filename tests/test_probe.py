"""The pretraining diagnostic: kNN and linear photo-z probes on frozen embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import MODEL, PRETRAIN, _cpu, tiny_store  # noqa: F401 (fixture)

from ssl_photoz.core.metrics import delta_z, sigma_mad
from ssl_photoz.evaluate.probe import calibrate_batch_norm, knn_cosine, ridge_photoz, run_probe
from ssl_photoz.learn.models import build_backbone
from ssl_photoz.learn.train import pretrain


def test_probes_recover_z_from_features_that_encode_it():
    rng = np.random.default_rng(0)
    z = rng.uniform(0.02, 0.3, 600)
    mixing = rng.normal(size=(3, 32))
    features = np.column_stack([z, z**2, rng.normal(size=600)]) @ mixing
    features += rng.normal(0, 0.01, features.shape)
    z_lin, alpha = ridge_photoz(features[:500], z[:500], features[500:])
    assert sigma_mad(delta_z(z_lin, z[500:])) < 0.005 and alpha > 0
    z_knn = knn_cosine(features[:500], z[:500], features[500:], k=5)
    assert sigma_mad(delta_z(z_knn, z[500:])) < 0.03
    # Features that know nothing of z: no better than the spread of z itself.
    noise = rng.normal(size=(600, 32))
    z_none, _ = ridge_photoz(noise[:500], z[:500], noise[500:])
    assert sigma_mad(delta_z(z_none, z[500:])) > 0.05


def test_batch_norm_calibration_sets_the_running_statistics_from_the_data():
    torch.manual_seed(0)
    net = build_backbone("resnet_small", width=16)
    images = torch.randn(20, 5, 107, 107) * 3 + 2

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return {"image": images[i]}

    calibrate_batch_norm(net, Items(), torch.device("cpu"), 64, batch_size=8)
    assert not net.training
    # Cumulative average over the 3 batches (momentum None), moved from the fresh 0 and 1.
    assert net.bn1.momentum is None and int(net.bn1.num_batches_tracked) == 3
    assert float(net.bn1.running_mean.abs().max()) > 0
    assert float((net.bn1.running_var - 1).abs().max()) > 0.1


def test_probe_compares_the_pretrained_and_the_random_encoder(tiny_store, tmp_path):  # noqa: F811
    store, stats = tiny_store
    pre = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    out = tmp_path / "probe.tsv"
    table = run_probe(pre, store, out, k=5)
    assert pd.read_csv(out, sep="\t").shape == table.shape == (4, 10)
    assert set(zip(table["encoder"], table["probe"], strict=True)) == {
        ("pretrained", "knn"),
        ("pretrained", "linear"),
        ("random init", "knn"),
        ("random init", "linear"),
    }
    # Every training label (48) learns, every validation object (24) is scored.
    assert (table["n_train"] == 48).all() and (table["n_val"] == 24).all()
    assert np.isfinite(table[["sigma_mad", "eta_percent", "bias"]].to_numpy()).all()
    assert (table["features"] == 8 * MODEL["width"]).all()


def test_both_encoders_get_the_same_batch_norm_treatment(tiny_store, tmp_path, monkeypatch):  # noqa: F811
    import ssl_photoz.evaluate.probe as probe_mod

    store, stats = tiny_store
    pre = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    calibrated = []
    original = probe_mod.calibrate_batch_norm

    def spy(net, *args, **kwargs):
        before = [m.running_mean.clone() for m in _batch_norms(net)]
        original(net, *args, **kwargs)
        after = [m.running_mean for m in _batch_norms(net)]
        calibrated.append(any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)))

    monkeypatch.setattr(probe_mod, "calibrate_batch_norm", spy)
    tables = {}
    for mode in ("recalibrate", "keep"):
        calibrated.clear()
        tables[mode] = run_probe(pre, store, tmp_path / f"{mode}.tsv", k=5, batch_norm=mode)
        assert (tables[mode]["batch_norm"] == mode).all()
        # recalibrate: both encoders (pretrained and random), each one's statistics changed;
        # keep: neither.
        assert calibrated == ([True, True] if mode == "recalibrate" else [])
    # The setting reaches the pretrained encoder too: its features, hence its scores, differ.
    pretrained = {
        m: t[t["encoder"] == "pretrained"]["sigma_mad"].to_numpy() for m, t in tables.items()
    }
    assert not np.allclose(pretrained["recalibrate"], pretrained["keep"], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="batch_norm"):
        run_probe(pre, store, tmp_path / "x.tsv", k=5, batch_norm="random only")


def _batch_norms(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
