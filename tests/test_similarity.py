"""Similarity search: FAISS against brute force, lookups, pools, anomalies, embeddings, figures
(ssl_photoz.similarity.embeddings, .faiss_index, .search, .similarity_figures) and the gri
pictures."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from test_data import write_store
from test_train import MODEL, PRETRAIN

from ssl_photoz.learn.train import Runtime, load_checkpoint, pretrain
from ssl_photoz.similarity import embeddings as emb_mod
from ssl_photoz.similarity import figures as figs
from ssl_photoz.similarity import index as fi
from ssl_photoz.similarity import search as srch


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic(path, vectors, seed: int = 0):
    """An embeddings file of `vectors` at random positions; splits cycle train, val, unlabeled."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "objid": np.arange(n, dtype=np.int64) + 5_000,
            "ra": rng.uniform(10.0, 11.0, n),
            "dec": rng.uniform(-1.0, 1.0, n),
            "z_spec": rng.uniform(0.01, 0.3, n),
            "split": np.array(["train", "val", "unlabeled"])[np.arange(n) % 3],
        }
    )
    emb_mod.write_embeddings(path, table, vectors, {"kind": "test"})
    return table


# --- search -------------------------------------------------------------------------------------


def test_faiss_equals_numpy_brute_force():
    database, queries = unit_vectors(3000, 32, seed=1), unit_vectors(64, 32, seed=2)
    d_faiss, i_faiss = fi.search(fi.build_index(database), queries, 10)
    d_np, i_np = fi.search_numpy(database, queries, 10)
    np.testing.assert_array_equal(i_faiss, i_np)
    np.testing.assert_allclose(d_faiss, d_np, atol=1e-5)
    # ... and both are the true Euclidean distances, nearest first
    true = np.linalg.norm(queries[:, None, :] - database[i_np], axis=2)
    np.testing.assert_allclose(d_np, true, atol=1e-5)
    assert (np.diff(d_faiss, axis=1) >= 0).all() and (np.diff(d_np, axis=1) >= 0).all()
    exact = np.argsort(np.linalg.norm(queries[:, None] - database[None], axis=2), axis=1)[:, :10]
    np.testing.assert_array_equal(i_np, exact)


def test_search_within_a_pool_only_returns_pool_rows():
    database, queries = unit_vectors(500, 16, seed=3), unit_vectors(5, 16, seed=4)
    rows = np.arange(0, 500, 7)
    dist, idx = fi.search(fi.build_index(database), queries, 5, rows)
    assert np.isin(idx, rows).all()
    d_np, i_np = fi.search_numpy(database[rows], queries, 5)
    np.testing.assert_array_equal(idx, rows[i_np])
    np.testing.assert_allclose(dist, d_np, atol=1e-5)


def test_non_unit_vectors_and_bad_k_are_refused():
    vectors = unit_vectors(20, 8)
    with pytest.raises(ValueError, match="not unit vectors"):
        fi.build_index(vectors * 2)
    with pytest.raises(ValueError, match="float32"):
        fi.build_index(vectors.astype(np.float64))
    with pytest.raises(ValueError, match="k must be in 1..20"):
        fi.search(fi.build_index(vectors), vectors[:1], 21)
    with pytest.raises(ValueError, match="8 dimensions, expected 4"):
        fi.search(fi.build_index(unit_vectors(20, 4)), vectors[:1], 3)


# --- embeddings files and lookups ---------------------------------------------------------------


def test_embeddings_file_round_trip_and_checks(tmp_path):
    vectors = unit_vectors(30, 8)
    path = tmp_path / "emb.parquet"
    table = write_synthetic(path, vectors)
    emb = emb_mod.load_embeddings(path)
    np.testing.assert_array_equal(emb.vectors, vectors)
    assert emb.vectors.dtype == np.float32 and emb.metadata == {"kind": "test"}
    pd.testing.assert_frame_equal(emb.table, table, check_dtype=False)
    bad = tmp_path / "bad.parquet"
    write_synthetic(bad, vectors * 1.5)
    with pytest.raises(ValueError, match="bad.parquet.*not unit vectors"):
        emb_mod.load_embeddings(bad)


def test_query_by_objid_excludes_itself_and_draws_from_the_pool(tmp_path):
    vectors = unit_vectors(300, 16, seed=5)
    path = tmp_path / "emb.parquet"
    table = write_synthetic(path, vectors)
    for row in (1, 3):  # a validation object, then a training object (which is in the pool)
        query = int(table["objid"][row])
        found = srch.query_neighbours(path, objid=query, k=5, pool="train")
        assert len(found) == 5 and query not in found["objid"].to_list()
        assert (found["split"] == "train").all()
        assert found["distance"].is_monotonic_increasing
        train = np.flatnonzero((table["split"] == "train").to_numpy() & (np.arange(300) != row))
        _, idx = fi.search_numpy(vectors[train], vectors[row], 5)
        np.testing.assert_array_equal(found["objid"], table["objid"].to_numpy()[train[idx[0]]])
        assert found.attrs["query"]["objid"] == query
    wide = srch.query_neighbours(path, objid=5001, k=8, pool="train+unlabeled")
    assert set(wide["split"]) <= {"train", "unlabeled"} and 5001 not in wide["objid"].to_list()
    assert srch.query_neighbours(path, objid=5001, k=299, pool="all")["objid"].nunique() == 299


def test_query_errors_name_the_objid_and_the_nearest_object(tmp_path):
    path = tmp_path / "emb.parquet"
    table = write_synthetic(path, unit_vectors(30, 8))
    with pytest.raises(ValueError, match="objid 424242 is not among the 30"):
        srch.query_neighbours(path, objid=424242)
    ra, dec = table["ra"][7], table["dec"][7]
    found = srch.query_neighbours(path, ra=ra + 1.0 / 3600, dec=dec, k=3, pool="all")
    assert found.attrs["query"]["objid"] == table["objid"][7]
    far_dec = table["dec"].max() + 10.0 / 3600  # 10 arcsec north of the northernmost object
    nearest = int(table["objid"][table["dec"].idxmax()])
    with pytest.raises(ValueError, match=rf"nearest, objid {nearest}, is \d+\.\d arcsec away"):
        srch.query_neighbours(path, ra=table["ra"][table["dec"].idxmax()], dec=far_dec)
    with pytest.raises(ValueError, match="either objid or both ra and dec"):
        srch.query_neighbours(path, ra=ra)
    with pytest.raises(ValueError, match="unknown pool"):
        srch.query_neighbours(path, objid=5000, pool="val")


def test_saved_index_is_used_and_a_stale_one_refused(tmp_path):
    path = tmp_path / "emb.parquet"
    write_synthetic(path, unit_vectors(50, 8, seed=1))
    saved = fi.write_index(path)
    assert saved == tmp_path / "emb.faiss" and saved.exists()
    before = srch.query_neighbours(path, objid=5001, k=4)
    write_synthetic(path, unit_vectors(50, 8, seed=2))  # the embeddings change, the index not
    with pytest.raises(ValueError, match="emb.faiss: the index does not match"):
        srch.query_neighbours(path, objid=5001, k=4)
    write_synthetic(path, unit_vectors(40, 8, seed=1))
    with pytest.raises(ValueError, match="emb.faiss: the index holds 50 vectors"):
        srch.query_neighbours(path, objid=5001, k=4)
    write_synthetic(path, unit_vectors(50, 8, seed=1))
    pd.testing.assert_frame_equal(srch.query_neighbours(path, objid=5001, k=4), before)
    saved.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="emb.faiss: not a FAISS index"):
        srch.query_neighbours(path, objid=5001, k=4)


# --- anomalies ----------------------------------------------------------------------------------


def test_anomalies_rank_a_planted_outlier_first():
    rng = np.random.default_rng(0)
    centres = unit_vectors(5, 32, seed=7)
    members = centres[rng.integers(0, 5, 400)] + 0.05 * rng.standard_normal((400, 32))
    outlier = unit_vectors(1, 32, seed=99)
    vectors = np.vstack([members[:200], outlier, members[200:]]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[300] = vectors[301]  # an exact duplicate must not hide behind its own copy
    found = srch.anomalies(vectors, k=5, n=10)
    assert found["row"].iloc[0] == 200
    assert found["kth_distance"].is_monotonic_decreasing and len(found) == 10
    # the scores are the brute-force distance to the 5th neighbour other than the object itself
    dist, idx = fi.search_numpy(vectors, vectors, 6)
    not_self = idx != np.arange(len(vectors))[:, None]
    kth = np.array([d[m][4] for d, m in zip(dist, not_self, strict=True)])
    np.testing.assert_allclose(found["kth_distance"], np.sort(kth)[::-1][:10], atol=1e-5)
    catalog = pd.DataFrame({"objid": np.arange(len(vectors)) + 100})
    assert srch.anomalies(vectors, k=5, n=3, catalog=catalog)["objid"].iloc[0] == 300


# --- embeddings from a pretrained model ---------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny store (two rows not ok) and a MoCo model pretrained on it for one epoch."""
    root = tmp_path_factory.mktemp("similarity")
    store = root / "cutouts.zarr"
    ok = np.ones(40, bool)
    ok[[3, 17]] = False
    write_store(store, ok=ok, split=(np.arange(40) % 3).astype(np.int8))
    stats = root / "stats.json"
    stats.write_text(json.dumps({"bands": list("ugriz"), "mad": [0.02] * 5}))
    model = root / "pretrain" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, model, Runtime(torch.device("cpu")))
    return store, stats, model


@pytest.fixture(scope="module")
def embedded(pretrained, tmp_path_factory):
    """The embeddings file of the pretrained model on its store, and its row count."""
    store, stats, model = pretrained
    path = tmp_path_factory.mktemp("embedded") / "embeddings.parquet"
    return path, emb_mod.compute_embeddings(model, store, stats, path, batch_size=16)


def test_compute_embeddings_one_unit_row_per_ok_object(pretrained, embedded, tmp_path, caplog):
    store, _, model = pretrained
    first, n_rows = embedded
    assert n_rows == 38
    second = tmp_path / "again.parquet"
    with caplog.at_level(logging.INFO, logger="ssl_photoz.similarity.embeddings"):
        assert emb_mod.compute_embeddings(model, store, None, second, batch_size=16) == 38
    assert "embedding 38 objects, skipping 2 with ok == False" in caplog.text
    a, b = emb_mod.load_embeddings(first), emb_mod.load_embeddings(second)
    assert a.vectors.shape == (38, PRETRAIN["dim"])
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a.vectors, b.vectors)  # deterministic
    expected_objid = np.delete(np.arange(40) + 10**18, [3, 17])
    np.testing.assert_array_equal(a.table["objid"], expected_objid)
    assert a.table["split"].iloc[0] == "train" and a.table["split"].iloc[1] == "val"
    assert a.metadata["checkpoint_sha256"] and a.metadata["n_skipped_not_ok"] == 2

    # The preprocessing is the dereddened centre crop through the query encoder and head.
    from ssl_photoz.learn import augment, data

    moco = emb_mod.pretrained_network(load_checkpoint(model), model)[1].eval()
    item = data.CutoutDataset(store, [5], deredden=False)[0]["image"][None]
    ebv = data.open_store(store).ebv[5]
    with torch.no_grad():
        want = moco.embed(augment.center_crop(augment.deredden(item, ebv))).numpy()[0]
    np.testing.assert_allclose(a.vectors[4], want, atol=1e-5)  # row 5 is the 5th ok object


def test_embeddings_of_a_byol_model_come_from_its_online_encoder_and_projector(
    pretrained, tmp_path
):
    from test_train import BYOL

    from ssl_photoz.learn import augment, data

    store, stats, _ = pretrained
    model = tmp_path / "byol" / "model.pt"
    pretrain(MODEL, {**BYOL, "epochs": 1}, store, stats, model, Runtime(torch.device("cpu")))
    out = tmp_path / "byol.parquet"
    assert emb_mod.compute_embeddings(model, store, stats, out, batch_size=16) == 38
    emb = emb_mod.load_embeddings(out)
    assert emb.vectors.shape == (38, BYOL["dim"])
    byol = emb_mod.pretrained_network(load_checkpoint(model), model)[1].eval()
    item = data.CutoutDataset(store, [5], deredden=False)[0]["image"][None]
    x = augment.center_crop(augment.deredden(item, data.open_store(store).ebv[5]))
    with torch.no_grad():
        want = torch.nn.functional.normalize(byol.online_projector(byol.online_encoder(x)), dim=1)
    np.testing.assert_allclose(emb.vectors[4], want.numpy()[0], atol=1e-5)


def test_compute_embeddings_refuses_a_classifier_checkpoint(pretrained, tmp_path):
    store, stats, _ = pretrained
    fake = tmp_path / "finetune.pt"
    torch.save({"kind": "finetune", "model": {}}, fake)
    with pytest.raises(ValueError, match="finetune.pt: not a MoCo pretraining checkpoint"):
        emb_mod.compute_embeddings(fake, store, stats, tmp_path / "out.parquet")


def _png_size(path):
    image = imread(path)
    return image.shape[1], image.shape[0]


def _expected_px(n_rows, n_cols):
    width, height = figs._figure_inches(n_rows, n_cols)
    return width * figs.DPI, height * figs.DPI


def test_figures_write_pngs_of_the_expected_size(pretrained, embedded, tmp_path):
    store = pretrained[0]
    emb = emb_mod.load_embeddings(embedded[0])

    fig1 = tmp_path / "fig1.png"
    plotted = figs.plot_similarity_search(emb, store, fig1, n_queries=3, k=4, seed=1)
    assert len(plotted) == 3 * 5 and (plotted["rank"] == 0).sum() == 3
    queries = plotted[plotted["rank"] == 0]["objid"]
    assert (emb.table.set_index("objid").loc[queries, "split"] == "val").all()
    neighbours = plotted[plotted["rank"] > 0]["objid"]
    assert (emb.table.set_index("objid").loc[neighbours, "split"] == "train").all()
    width, height = _png_size(fig1)
    want_w, want_h = _expected_px(3, 5)
    assert abs(width - want_w) <= 1 and abs(height - want_h) <= 1

    odd = tmp_path / "anomalies.png"
    figs.plot_anomalies(srch.anomalies(emb.vectors, k=3, n=7, catalog=emb.table), store, odd)
    width, height = _png_size(odd)
    want_w, want_h = _expected_px(2, 5)
    assert abs(width - want_w) <= 1 and abs(height - want_h) <= 1
    assert imread(odd)[..., :3].std() > 0.05  # pictures were drawn, not a blank canvas


# --- index choice by size: exact flat, or IVF with measured recall -----------------------------


def clustered_unit_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors from 40 Gaussian clusters in an 8-d latent space projected to d dimensions."""
    shape = np.random.default_rng(123)
    project = shape.standard_normal((8, d)) / np.sqrt(8)
    centres = shape.standard_normal((40, 8))
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, 8))
    x = (z @ project + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def ivf_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fi, "EXACT_MAX", 1000)
    vectors = clustered_unit_vectors(5000, seed=11)
    path = tmp_path / "emb.parquet"
    table = write_synthetic(path, vectors)
    return path, vectors, table


def _recall_by_numpy(index, vectors, rows, k):
    """recall@k of index on data rows as queries, self excluded, against search_numpy."""
    _, exact = fi.search_numpy(vectors, vectors[rows], k + 1)
    _, found = fi.search(index, vectors[rows], k + 1)
    hits = []
    for e, f, row in zip(exact, found, rows, strict=True):
        e, f = e[e != row][:k], f[(f != row) & (f >= 0)][:k]
        hits.append(len(set(e) & set(f)) / k)
    return float(np.mean(hits))


def test_large_index_is_ivf_with_its_recall_recorded(ivf_file, caplog):
    path, vectors, _ = ivf_file
    with caplog.at_level(logging.INFO, logger="ssl_photoz.similarity.index"):
        saved = fi.write_index(path)
    assert "recall@5" in caplog.text
    info = json.loads(fi.index_info_path(saved).read_text())
    assert saved.with_name("emb.faiss.json").exists()
    assert info["kind"] == "ivf" and info["ntotal"] == 5000
    assert info["nlist"] == fi.ivf_nlist(5000) == 128  # 4 sqrt(5000) -> 256, halved for training
    assert info["nprobe"] == fi.IVF_NPROBE and info["recall_queries"] == 500
    assert info["recall"] >= 0.95
    index = fi.load_index(saved, vectors)
    ivf = faiss_ivf(index)
    assert ivf is not None and ivf.nprobe == info["nprobe"] and ivf.nlist == 128
    with pytest.raises(ValueError, match="emb.faiss: the index does not match"):
        fi.load_index(saved, vectors[::-1].copy())  # the IVF keeps its vectors readable
    rows = fi.recall_rows(5000)
    assert len(rows) == 500 and len(np.unique(rows)) == 500
    assert _recall_by_numpy(index, vectors, rows, 5) == pytest.approx(info["recall"], abs=1e-9)
    # ... and an approximate index it is: one list per query misses neighbours
    ivf.nprobe = 1
    assert _recall_by_numpy(index, vectors, rows, 5) < info["recall"]


def test_ivf_nprobe_rises_until_the_recall_is_reached(ivf_file, monkeypatch):
    path, vectors, _ = ivf_file
    monkeypatch.setattr(fi, "IVF_NPROBE", 1)
    saved = fi.write_index(path)
    info = fi.load_index_info(saved)
    assert info["nprobe"] > 1 and info["recall"] >= 0.95
    index = fi.load_index(saved, vectors)
    assert faiss_ivf(index).nprobe == info["nprobe"]  # restored from the sidecar, not the default
    rows = fi.recall_rows(5000)
    assert _recall_by_numpy(index, vectors, rows, 5) == pytest.approx(info["recall"], abs=1e-9)
    faiss_ivf(index).nprobe = info["nprobe"] // 2  # the previous step fell short
    assert _recall_by_numpy(index, vectors, rows, 5) < 0.95
    # FAISS keeps nprobe in the file too; the sidecar's value is the one load_index applies
    fi.index_info_path(saved).write_text(json.dumps(info | {"nprobe": 16}))
    assert faiss_ivf(fi.load_index(saved, vectors)).nprobe == 16


def test_pool_search_and_anomalies_work_with_ivf(ivf_file):
    path, vectors, table = ivf_file
    fi.write_index(path)
    emb = emb_mod.load_embeddings(path)
    index = fi.open_index(emb)
    assert faiss_ivf(index) is not None
    rows = np.flatnonzero((table["split"] == "train").to_numpy())
    queries = vectors[[1, 4, 7, 10]]
    dist, idx = fi.search(index, queries, 10, rows)
    assert np.isin(idx[idx >= 0], rows).all() and (idx >= 0).mean() > 0.9
    # with every list probed the pool search is exact (so the params carry nprobe)
    faiss_ivf(index).nprobe = faiss_ivf(index).nlist
    dist, idx = fi.search(index, queries, 10, rows)
    d_np, i_np = fi.search_numpy(vectors[rows], queries, 10)
    np.testing.assert_array_equal(idx, rows[i_np])
    np.testing.assert_allclose(dist, d_np, atol=1e-5)
    found = srch.query_neighbours(path, objid=5001, k=5, pool="train")
    assert len(found) == 5 and (found["split"] == "train").all() and 5001 not in found["objid"]
    odd = srch.anomalies(vectors[:2000], k=5, n=5, index=fi.build_ivf_index(vectors[:2000]))
    exact = srch.anomalies(vectors[:2000], k=5, n=5)
    assert np.isfinite(odd["kth_distance"]).all()
    assert len(set(odd["row"]) & set(exact["row"])) >= 3


def test_small_index_stays_flat_and_a_mismatched_sidecar_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fi, "EXACT_MAX", 1000)
    path = tmp_path / "emb.parquet"
    vectors = clustered_unit_vectors(1000, seed=3)
    write_synthetic(path, vectors)
    saved = fi.write_index(path)
    info = fi.load_index_info(saved)
    assert info["kind"] == "flat" and info["recall"] == 1.0 and "nprobe" not in info
    assert faiss_ivf(fi.load_index(saved, vectors)) is None
    fi.index_info_path(saved).write_text(json.dumps(info | {"kind": "ivf", "nlist": 64}))
    with pytest.raises(ValueError, match="emb.faiss.json: the sidecar says kind 'ivf'"):
        fi.load_index(saved, vectors)


def faiss_ivf(index):
    import faiss

    return faiss.try_extract_index_ivf(index)


# --- gri pictures: the Lupton et al. (2004) stretch against astropy's --------------------------


def _galaxy_planes(noise: float = 0.01):
    """i, r, g planes (nanomaggies) of a red-ish galaxy on a sky with Gaussian noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    profile = np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / 40.0)
    return [a * 20 * profile + rng.normal(0, noise, profile.shape) for a in (1.0, 0.8, 0.5)]


def test_lupton_stretch_equals_astropys_wherever_the_intensity_is_positive():
    from astropy.visualization import make_lupton_rgb

    from ssl_photoz.cutouts.pictures import astropy_lupton_args, lupton_asinh

    planes = _galaxy_planes()
    ours = lupton_asinh(*planes)
    args = astropy_lupton_args()
    theirs = make_lupton_rgb(*planes, **args, output_dtype=np.float64)
    eight_bit = make_lupton_rgb(*planes, **args)  # astropy's default: uint8, truncated
    positive = np.mean(planes, axis=0) > 0
    assert (ours[positive] > 0.99).any()  # the core saturates: the hue-keeping cap is tested too
    np.testing.assert_allclose(ours[positive], theirs[positive], rtol=0, atol=1e-12)
    assert np.abs(ours[positive] * 255 - eight_bit[positive]).max() < 1.0  # within rounding
    # ... but astropy paints every pixel of mean intensity <= 0 black (a third of this sky);
    # the paper's f(I)/I is positive there and ours keeps their positive channels linear.
    assert 0.2 < (~positive).mean() < 0.5
    assert (theirs[~positive] == 0).all() and ours[~positive].max() > 0.1


def test_gri_image_is_north_up_in_0_1_and_blank_where_not_finite():
    from ssl_photoz.cutouts.pictures import gri_image, lupton_asinh

    i, r, g = _galaxy_planes()
    r[0, 0] = np.nan  # row 0 is south: it ends up at the bottom
    cutout = np.zeros((5, 64, 64))
    cutout[1], cutout[2], cutout[3] = g, r, i
    rgb = gri_image(cutout)
    assert rgb.shape == (64, 64, 3) and 0 <= rgb.min() and rgb.max() <= 1
    want = lupton_asinh(i * 1.0, np.nan_to_num(r, nan=0.0) * 1.1, g * 1.8)[::-1]
    np.testing.assert_allclose(rgb, want)
    assert np.isfinite(rgb).all()
