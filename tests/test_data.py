"""Reading the cut-out store: selections (and the val leakage guard), the Dataset, the loader."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import zarr

from ssl_photoz.learn import data
from ssl_photoz.learn.data import (
    CutoutDataset,
    EmptySelectionError,
    labeled_indices,
    load_stats,
    make_loader,
    open_store,
    pretrain_indices,
)
from ssl_photoz.surveys.sdss.extinction import SF11_VECTOR

N = 40
SPLIT_CODES = ["train", "val", "unlabeled"]


def write_store(path, n: int = N, seed: int = 0, split=None, ok=None, checksums=False):
    """A tiny store with the contract's layout; image values encode (row, band) for checks.
    ``checksums``: the images' codecs as the pipeline writes them (zstd, then CRC32C)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    rng = np.random.default_rng(seed)
    images = zarr.create_array(
        store=path,
        name="images",
        shape=(n, 5, 107, 107),
        chunks=(1, 5, 107, 107),
        shards=(16, 5, 107, 107),
        dtype="float32",
        fill_value=np.nan,
        compressors=[ZstdCodec(level=0, checksum=False), Crc32cCodec()] if checksums else "auto",
    )
    values = rng.uniform(0.5, 1.5, (n, 5, 107, 107)).astype(np.float32)
    values[:, :, 0, 0] = np.arange(n)[:, None]  # row number in a corner pixel
    ok = np.ones(n, bool) if ok is None else ok
    values[~ok] = np.nan
    images[:] = values
    split = rng.integers(0, 3, n).astype(np.int8) if split is None else split
    z_spec = np.where(split == 2, np.nan, rng.uniform(0.01, 0.4, n))
    group = zarr.open_group(path, mode="r+")
    columns = {
        "objid": np.arange(n, dtype=np.int64) + 10**18,
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-10, 60, n),
        "z_spec": z_spec,
        "ebv": rng.uniform(0.0, 0.3, n),
        "split": split,
        "fraction_rank": rng.uniform(0, 1, n),
        "ok": ok,
    }
    for name, column in columns.items():
        group.create_array(name, data=column)
    group.attrs["split_codes"] = SPLIT_CODES
    return columns, values


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "cutouts.zarr"
    ok = np.ones(N, bool)
    ok[[3, 17]] = False  # NaN images that must never be served
    columns, values = write_store(path, ok=ok)
    return path, columns, values


# --- store and selections ----------------------------------------------------------------------


def test_open_store_loads_columns(store_path):
    path, columns, _ = store_path
    store = open_store(path)
    assert len(store) == N
    np.testing.assert_array_equal(store.objid, columns["objid"])
    np.testing.assert_array_equal(store.ok, columns["ok"])
    assert store.split_codes == tuple(SPLIT_CODES)
    assert store.images.shape == (N, 5, 107, 107)


def test_open_store_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        open_store(tmp_path / "nowhere.zarr")


def test_pretrain_indices_never_include_val(store_path):
    path, columns, _ = store_path
    store = open_store(path)
    idx = pretrain_indices(store)
    assert len(idx) > 0
    assert not np.isin(idx, np.flatnonzero(columns["split"] == 1)).any()  # leakage guard
    assert store.ok[idx].all()
    expected = np.flatnonzero(columns["ok"] & (columns["split"] != 1))
    np.testing.assert_array_equal(idx, expected)


def test_pretrain_guard_uses_the_split_names_not_fixed_codes(tmp_path):
    # Another code order: the guard must follow attrs["split_codes"], not assume val == 1.
    path = tmp_path / "s.zarr"
    columns, _ = write_store(path)
    zarr.open_group(path, mode="r+").attrs["split_codes"] = ["val", "train", "unlabeled"]
    idx = pretrain_indices(open_store(path))
    np.testing.assert_array_equal(idx, np.flatnonzero(columns["split"] != 0))


def test_labeled_indices_and_nested_fractions(store_path):
    path, columns, _ = store_path
    store = open_store(path)
    val = labeled_indices(store, "val")
    assert (columns["split"][val] == 1).all() and store.ok[val].all()
    train = labeled_indices(store, "train")
    assert (columns["split"][train] == 0).all() and np.isfinite(store.z_spec[train]).all()
    assert np.array_equal(labeled_indices(store, "train", 1.0), train)
    previous = set()
    for fraction in (0.5, 0.75, 1.0):  # the tiny store has about a dozen train rows
        subset = labeled_indices(store, "train", fraction)
        assert previous <= set(subset.tolist())  # nested
        assert (store.fraction_rank[subset] < fraction).all()
        previous = set(subset.tolist())
    assert not set(val.tolist()) & previous


def test_labeled_indices_take_each_seeds_own_labels(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, n=120)  # about 40 train rows
    store = open_store(path)
    # Seed 0 is the store's fraction_rank (the catalogue baselines' labels).
    seed0 = labeled_indices(store, "train", 0.5, seed=0)
    np.testing.assert_array_equal(seed0, labeled_indices(store, "train", 0.5))
    assert (store.fraction_rank[seed0] < 0.5).all()
    subsets = {}
    for seed in (0, 1, 2):
        previous = set()
        for fraction in (0.3, 0.6, 1.0):
            subset = set(labeled_indices(store, "train", fraction, seed=seed).tolist())
            assert previous <= subset  # nested for one seed
            previous = subset
        subsets[seed] = set(labeled_indices(store, "train", 0.6, seed=seed).tolist())
        again = labeled_indices(open_store(path), "train", 0.6, seed=seed)
        assert set(again.tolist()) == subsets[seed]  # the same seed, the same labels
        assert previous == set(labeled_indices(store, "train").tolist())
    assert len({frozenset(v) for v in subsets.values()}) == 3  # each seed its own labels


def test_empty_selections_raise(tmp_path):
    path = tmp_path / "only_unlabeled.zarr"
    write_store(path, n=8, split=np.full(8, 2, np.int8))
    store = open_store(path)
    with pytest.raises(EmptySelectionError, match="val"):
        labeled_indices(store, "val")
    with pytest.raises(EmptySelectionError, match="train"):
        labeled_indices(store, "train", 0.5)
    path = tmp_path / "only_val.zarr"
    write_store(path, n=8, split=np.full(8, 1, np.int8))
    with pytest.raises(EmptySelectionError, match="pretraining"):
        pretrain_indices(open_store(path))


def test_bad_selection_arguments(store_path):
    store = open_store(store_path[0])
    with pytest.raises(ValueError, match="'train' or 'val'"):
        labeled_indices(store, "unlabeled")
    with pytest.raises(ValueError, match="train split only"):
        labeled_indices(store, "val", 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        labeled_indices(store, "train", 0.0)


# --- dataset -----------------------------------------------------------------------------------


def test_items_match_the_store(store_path):
    path, columns, values = store_path
    idx = pretrain_indices(open_store(path))
    ds = CutoutDataset(path, idx, deredden=False)
    assert len(ds) == len(idx)
    for i in (0, len(ds) - 1):
        item = ds[i]
        row = int(idx[i])
        assert item["index"] == row
        assert item["image"].dtype == torch.float32 and item["image"].shape == (5, 107, 107)
        np.testing.assert_array_equal(item["image"].numpy(), values[row])
        assert item["z"].dtype == torch.float32
        np.testing.assert_allclose(item["z"].item(), columns["z_spec"][row], rtol=1e-6)
    unlabeled = [i for i, r in enumerate(idx) if columns["split"][r] == 2]
    assert torch.isnan(ds[unlabeled[0]]["z"])


def test_dereddening_applied(store_path):
    path, columns, values = store_path
    idx = labeled_indices(open_store(path), "val")
    item = CutoutDataset(path, idx, deredden=True)[0]
    row = idx[0]
    factor = 10 ** (0.4 * SF11_VECTOR * columns["ebv"][row])
    expected = values[row] * factor[:, None, None]
    np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-5)
    assert item["image"].dtype == torch.float32


def test_dataset_refuses_bad_rows(store_path):
    path, _, _ = store_path
    with pytest.raises(ValueError, match="not ok"):
        CutoutDataset(path, [2, 3], deredden=False)
    with pytest.raises(EmptySelectionError):
        CutoutDataset(path, [], deredden=False)
    with pytest.raises(IndexError):
        CutoutDataset(path, [N], deredden=False)


def test_a_damaged_shard_fails_the_read_naming_the_store_shard_and_objects(tmp_path):
    path = tmp_path / "cutouts.zarr"
    columns, values = write_store(path, checksums=True)
    ds = CutoutDataset(path, np.arange(N), deredden=False)
    shard_file = path / "images" / "c" / "1" / "0" / "0" / "0"
    span = f"rows 16..31, objid {columns['objid'][16]}..{columns['objid'][31]}"
    original = shard_file.read_bytes()
    damaged = bytearray(original)
    damaged[100] ^= 0x10  # inside the first image of the shard: row 16
    shard_file.write_bytes(bytes(damaged))
    with pytest.raises(data.CorruptStoreError) as caught:
        ds[16]
    message = str(caught.value)
    assert str(path) in message and str(shard_file) in message and span in message
    assert "checksum" in message
    np.testing.assert_array_equal(ds[17]["image"].numpy(), values[17])  # its own CRC32C: fine
    with pytest.raises(data.CorruptStoreError, match="rows 16..31"):
        next(iter(make_loader(ds, 32, shuffle=False, num_workers=0, seed=0, drop_last=False)))
    shard_file.write_bytes(original)
    assert open_store(path).image(16).shape == (5, 107, 107)


def test_a_missing_shard_fails_the_read_never_nan(tmp_path):
    path = tmp_path / "cutouts.zarr"
    columns, _ = write_store(path, checksums=True)
    shard_file = path / "images" / "c" / "2" / "0" / "0" / "0"
    shard_file.unlink()
    ds = CutoutDataset(path, np.arange(N), deredden=False)
    with pytest.raises(data.CorruptStoreError, match=rf"{shard_file} \(rows 32..39.*is missing"):
        ds[35]
    with pytest.raises(data.CorruptStoreError, match="is missing"):
        open_store(path).image(39)


def test_dataset_pickles_after_use(store_path):
    path, _, values = store_path
    ds = CutoutDataset(path, [0, 1], deredden=False)
    ds[0]  # opens the Zarr handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None
    np.testing.assert_array_equal(clone[1]["image"].numpy(), values[1])


# --- loader ------------------------------------------------------------------------------------


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch["index"].tolist()]


def test_loader_shuffles_reproducibly(store_path):
    path, _, _ = store_path
    ds = CutoutDataset(path, pretrain_indices(open_store(path)), deredden=False)
    a = _order(make_loader(ds, 8, shuffle=True, num_workers=0, seed=1, drop_last=False))
    b = _order(make_loader(ds, 8, shuffle=True, num_workers=0, seed=1, drop_last=False))
    c = _order(make_loader(ds, 8, shuffle=True, num_workers=0, seed=2, drop_last=False))
    assert a == b and a != c
    assert sorted(a) == sorted(ds.indices.tolist())


def test_loader_with_two_workers(store_path):
    path, columns, values = store_path
    store = open_store(path)  # the parent has used Zarr before the workers fork
    ds = CutoutDataset(path, pretrain_indices(store), deredden=False)
    ds[0]
    loader = make_loader(ds, 8, shuffle=True, num_workers=2, seed=1, drop_last=True)
    assert loader.persistent_workers
    seen = []
    for batch in loader:
        assert batch["image"].shape == (8, 5, 107, 107)
        for image, row in zip(batch["image"], batch["index"].tolist(), strict=True):
            np.testing.assert_array_equal(image.numpy(), values[row])
        seen += batch["index"].tolist()
    assert len(seen) == len(ds) // 8 * 8
    serial = make_loader(ds, 8, shuffle=True, num_workers=0, seed=1, drop_last=True)
    assert seen == _order(serial)  # same order whatever the number of workers


# --- stats -------------------------------------------------------------------------------------


def write_stats(path, **overrides):
    stats = {"bands": list("ugriz"), "mad": [0.019, 0.0076, 0.011, 0.018, 0.078]}
    stats.update(overrides)
    path.write_text(json.dumps(stats))
    return path


def test_load_stats(tmp_path):
    mad = load_stats(write_stats(tmp_path / "stats.json"))
    assert mad.dtype == torch.float32 and mad.shape == (5,)
    assert torch.allclose(mad, torch.tensor([0.019, 0.0076, 0.011, 0.018, 0.078]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bands": list("grizu")}, "bands"),
        ({"mad": [0.1, 0.1, 0.1, 0.1]}, "mad"),
        ({"mad": [0.1, 0.1, 0.0, 0.1, 0.1]}, "band r"),
        ({"mad": [0.1, -1, 0.1, 0.1, 0.1]}, "band g"),
        ({"mad": [0.1, 0.1, 0.1, 0.1, None]}, "band z"),
        ({"mad": [0.1, 0.1, 0.1, float("nan"), 0.1]}, "band i"),
        ({"mad": [0.1, 0.1, 0.1, float("inf"), 0.1]}, "band i"),
    ],
)
def test_load_stats_rejects_bad_values(tmp_path, overrides, message):
    path = write_stats(tmp_path / "bad_stats.json", **overrides)
    with pytest.raises(ValueError, match=message) as info:
        load_stats(path)
    assert "bad_stats.json" in str(info.value)


def test_load_stats_missing_or_garbled(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_stats(tmp_path / "absent.json")
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    with pytest.raises(ValueError, match="garbled.json"):
        load_stats(garbled)


def test_load_stats_reads_the_pipeline_file_format(tmp_path):
    # The stats stage writes extra keys (median, n_images, definition): they are ignored.
    path = write_stats(tmp_path / "stats.json", median=[0.0] * 5, n_images=3, definition="MAD")
    assert load_stats(path).shape == (5,)


def test_module_imports_nothing_from_the_data_half():
    # Of the data half, training reads the store's reader only: an edit of how cut-outs are
    # made must not count in the training code's digest.
    from conftest import data_half_reached

    assert not data_half_reached(data.__name__)
