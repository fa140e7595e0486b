"""Training loops: loss falls, checkpoints resume exactly, DDP on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ssl_photoz.core.config import with_defaults
from ssl_photoz.learn.precision import Precision
from ssl_photoz.learn.ssl.moco import check_queue_fits_pool
from ssl_photoz.learn.train import (
    Runtime,
    load_checkpoint,
    pretrain,
    setup_runtime,
    train_classifier,
)

# Hand-written sections, filled with their schema defaults as the CLI fills them.
MODEL = with_defaults("model", {"arch": "resnet_small", "width": 16})
PRETRAIN = with_defaults(
    "pretrain",
    {
        "epochs": 2,
        "warmup_epochs": 0,
        "batch_size": 16,
        "lr": 0.05,
        "weight_decay": 0.0001,
        "dim": 16,
        "queue_size": 20,  # below the tests' smallest pretraining pool (25 in test_similarity)
        "momentum": 0.9,
        "temperature": 0.2,
        "seed": 0,
    },
)
FINETUNE = with_defaults(
    "finetune",
    {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.003,
        "backbone_lr_factor": 0.1,
        "weight_decay": 0.0,
        "n_bins": 180,
        "z_min": 0.0,
        "z_max": 0.4,
    },
)
# The supervised baselines' own recipe: one learning rate for every layer.
FINETUNE_ONLY = ("backbone_lr_factor", "arms", "lpft_head_fraction", "probe_hidden")
SUPERVISED = with_defaults(
    "supervised", {k: v for k, v in FINETUNE.items() if k not in FINETUNE_ONLY}
)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """96 synthetic galaxies whose size and colour follow z, in the store's contract layout."""
    return _write_store(tmp_path_factory.mktemp("store"))


def _write_store(root: Path, seed: int = 0) -> tuple[Path, Path]:
    store = root / "cutouts.zarr"
    n = 96
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.02, 0.3, n)
    yy, xx = np.mgrid[:107, :107] - 53.0
    images = np.empty((n, 5, 107, 107), np.float32)
    for k in range(n):
        radius = 2.0 + 10.0 * (0.3 - z[k])
        profile = np.exp(-0.5 * (xx**2 + yy**2) / radius**2)
        colour = np.array([0.3, 0.6, 1.0, 1.3, 1.5]) ** (1 + 5 * z[k])
        images[k] = colour[:, None, None] * profile + rng.normal(0, 0.02, (5, 107, 107))
    array = zarr.create_array(
        store=str(store),
        name="images",
        shape=images.shape,
        chunks=(1, 5, 107, 107),
        shards=(16, 5, 107, 107),
        dtype="float32",
        fill_value=np.nan,
    )
    array[:] = images
    group = zarr.open_group(str(store), mode="r+")
    split = np.where(np.arange(n) % 4 == 0, 1, np.where(np.arange(n) % 4 == 1, 2, 0)).astype(
        np.int8
    )
    columns = {
        "objid": np.arange(n, dtype=np.int64) + 1,
        "ra": rng.uniform(0, 1, n),
        "dec": rng.uniform(0, 1, n),
        "z_spec": np.where(split == 2, np.nan, z),
        "ebv": rng.uniform(0, 0.05, n),
        "split": split,
        "fraction_rank": rng.uniform(0, 1, n),
        "ok": np.ones(n, dtype=bool),
    }
    for name, values in columns.items():
        group.create_array(name, data=values)
    group.attrs["split_codes"] = ["train", "val", "unlabeled"]
    stats = root / "stats.json"
    stats.write_text(json.dumps({"bands": list("ugriz"), "mad": [0.02] * 5}))
    return store, stats


def _cpu():
    return Runtime(torch.device("cpu"))


def test_pretraining_trains_and_checkpoints_everything(tiny_store, tmp_path):
    # (That the InfoNCE loss falls is tested in test_models on a fixed problem: here the queue
    # starts with random negatives, so early losses are not comparable.)
    store, stats = tiny_store
    out = tmp_path / "pretrain" / "model.pt"
    summary = pretrain(MODEL, {**PRETRAIN, "epochs": 2}, store, stats, out, _cpu())
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    state = load_checkpoint(out)
    assert "queue" in state["moco"] and "queue_ptr" in state["moco"]
    fresh = load_checkpoint(out)["backbone"]
    assert fresh.keys() == state["backbone"].keys()
    last = load_checkpoint(out.parent / "checkpoint.pt")
    assert last["epoch"] == 1 and {"optimizer", "scheduler", "scaler", "history"} <= set(last)
    assert last["optimizer"]["state"], "the optimiser state (momentum buffers) is saved"
    # the pretraining pool never contains validation images
    assert summary["n_images"] == int((np.arange(96) % 4 != 1).sum())
    assert summary["precision"]["chosen"] == "fp32"  # a Runtime built without one: fp32


def test_pretraining_refuses_a_queue_as_large_as_the_pool(tiny_store, tmp_path):
    store, stats = tiny_store
    pool = int((np.arange(96) % 4 != 1).sum())  # 72
    out = tmp_path / "pretrain" / "model.pt"
    for queue in (pool, pool + 1, 1024):
        with pytest.raises(ValueError, match=rf"pretrain.queue_size {queue} .* {pool} images"):
            pretrain(MODEL, {**PRETRAIN, "queue_size": queue}, store, stats, out, _cpu())
    assert not out.parent.exists() or not any(out.parent.iterdir())
    check_queue_fits_pool(pool - 1, pool)  # one below the pool is allowed


def test_training_logs_and_records_its_precision(tiny_store, tmp_path, caplog):
    store, stats = tiny_store
    chosen = Precision("bf16", "cpu", "auto", "test: measured faster")
    runtime = Runtime(torch.device("cpu"), precision=chosen)
    caplog.set_level("INFO", logger="ssl_photoz")
    summary = pretrain(
        MODEL, {**PRETRAIN, "epochs": 1}, store, stats, tmp_path / "p" / "model.pt", runtime
    )
    assert summary["precision"] == {
        "chosen": "bf16",
        "device_type": "cpu",
        "requested": "auto",
        "reason": "test: measured faster",
    }
    assert "pretrain: precision bf16 on cpu (asked: auto): test: measured faster" in caplog.text
    assert load_checkpoint(tmp_path / "p" / "checkpoint.pt")["precision"] == "bf16"


def test_setup_runtime_honours_an_explicit_precision_and_names_a_bad_one():
    assert setup_runtime("cpu", precision="fp32").precision.name == "fp32"
    bf16 = setup_runtime("cpu", precision="bf16").precision
    assert bf16.name == "bf16" and bf16.requested == "bf16"
    with pytest.raises(ValueError, match="precision 'fp64' is not one of auto, fp32, bf16, fp16"):
        setup_runtime("cpu", precision="fp64")


def _weights(path):
    return {k: v for k, v in load_checkpoint(path)["model"].items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.fixture
def steps(monkeypatch):
    """Counts the optimiser steps the training loops take."""
    from ssl_photoz.learn import epochs

    taken = []
    original = epochs.optimizer_step

    def counted(*args, **kwargs):
        taken.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(epochs, "optimizer_step", counted)
    return taken


def _manifest(path: Path, n_ok: int = 96) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"n_objects": 96, "n_ok": n_ok, "n_failed": 96 - n_ok}))
    return path


def test_killed_pretraining_resumes_to_the_same_weights(tiny_store, tmp_path, steps, caplog):
    store, stats = tiny_store
    manifest = _manifest(tmp_path / "manifest.json")
    straight = tmp_path / "straight" / "model.pt"
    pretrain(MODEL, PRETRAIN, store, stats, straight, _cpu(), manifest=manifest)
    per_epoch = len(steps) // PRETRAIN["epochs"]
    assert per_epoch == 72 // 16
    resumed = tmp_path / "resumed" / "model.pt"
    pretrain(MODEL, PRETRAIN, store, stats, resumed, _cpu(), max_epochs=1, manifest=manifest)
    assert not resumed.exists()  # "killed" after epoch 1
    steps.clear()
    caplog.set_level("INFO", logger="ssl_photoz")
    pretrain(MODEL, PRETRAIN, store, stats, resumed, _cpu(), manifest=manifest)
    # It resumed (a fresh run would give the same weights too): only epoch 2's steps were taken.
    assert len(steps) == per_epoch and "resuming after epoch 1" in caplog.text
    _assert_same(load_checkpoint(straight)["moco"], load_checkpoint(resumed)["moco"])


def test_finetune_and_supervised_train_and_resume(tiny_store, tmp_path, steps):
    store, stats = tiny_store
    pre = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    straight = tmp_path / "ft" / "model.pt"
    s = train_classifier(MODEL, FINETUNE, store, straight, _cpu(), 1.0, 0, pretrained=pre)
    assert s["kind"] == "finetune" and s["n_val"] == 24
    assert s["precision"]["chosen"] == "fp32"
    assert np.isfinite(s["history"][-1]["sigma_mad"])
    resumed = tmp_path / "ft2" / "model.pt"
    train_classifier(MODEL, FINETUNE, store, resumed, _cpu(), 1.0, 0, pretrained=pre, max_epochs=1)
    steps.clear()
    train_classifier(MODEL, FINETUNE, store, resumed, _cpu(), 1.0, 0, pretrained=pre)
    assert len(steps) == s["recipe"]["steps_per_epoch"]  # resumed: epoch 2 only
    _assert_same(_weights(straight), _weights(resumed))
    sup = train_classifier(MODEL, SUPERVISED, store, tmp_path / "sup" / "model.pt", _cpu(), 0.5, 1)
    assert sup["kind"] == "supervised" and sup["n_train"] < s["n_train"]
    # The summaries record the recipe as run: optimiser, rates, batch and the steps taken.
    assert s["recipe"]["lr"] == {"backbone": pytest.approx(0.0003), "head": 0.003}
    assert s["recipe"]["steps_done"] == 2 * s["recipe"]["steps_per_epoch"] > 0
    assert sup["recipe"]["optimizer"] == "Adam" and sup["recipe"]["batch_size"] == 16


# -- a checkpoint resumes only a run with the same inputs (issue 19: "a rerun retrains") --------
def test_finetuning_after_another_pretrained_model_retrains(tiny_store, tmp_path, caplog):
    """The pretraining reruns into the same file (a changed pretrain.lr, say): the fine-tuning's
    finished checkpoint, of an unchanged finetune config, must not be resumed."""
    store, stats = tiny_store
    pre = tmp_path / "pre" / "model.pt"
    ft_cfg = {**FINETUNE, "epochs": 1}
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    ft = tmp_path / "ft" / "model.pt"
    train_classifier(MODEL, ft_cfg, store, ft, _cpu(), 1.0, 0, pretrained=pre)
    before = _weights(ft)
    pretrain(MODEL, {**PRETRAIN, "epochs": 1, "lr": 0.5}, store, stats, pre, _cpu())
    caplog.set_level("INFO", logger="ssl_photoz")
    train_classifier(MODEL, ft_cfg, store, ft, _cpu(), 1.0, 0, pretrained=pre)
    assert "pretrained model differs" in caplog.text and "starting afresh" in caplog.text
    assert "resuming" not in caplog.text
    after = _weights(ft)
    assert _differ(before, after), "the fine-tuned weights are those of the old pretraining"
    # ... and they are those of a fine-tuning from the new pretrained model in a clean folder.
    clean = tmp_path / "clean" / "model.pt"
    train_classifier(MODEL, ft_cfg, store, clean, _cpu(), 1.0, 0, pretrained=pre)
    _assert_same(after, _weights(clean))


def test_a_code_change_retrains_the_pretraining(tiny_store, tmp_path, monkeypatch, caplog):
    """Editing the training code changes its digest (the rule's code param): a rerun must not
    resume the finished checkpoint written by the old code."""
    from ssl_photoz.core import codehash
    from ssl_photoz.learn.ssl import moco

    store, stats = tiny_store
    cfg = {**PRETRAIN, "epochs": 1}
    out = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, cfg, store, stats, out, _cpu())
    old = load_checkpoint(out)["moco"]
    # The "edit": the loss doubled (so the weights change), and with it the code's digest.
    info_nce = moco.info_nce
    monkeypatch.setattr(moco, "info_nce", lambda logits, labels: 2 * info_nce(logits, labels))
    # Without a new digest the finished checkpoint is resumed: no step, the old weights.
    pretrain(MODEL, cfg, store, stats, out, _cpu())
    _assert_same(old, load_checkpoint(out)["moco"])
    digest = codehash.code_digest("ssl_photoz.learn.train")
    monkeypatch.setattr(codehash, "code_digest", lambda *modules: "0123456789abcdef")
    caplog.set_level("INFO", logger="ssl_photoz")
    pretrain(MODEL, cfg, store, stats, out, _cpu())
    assert "code (ssl_photoz.learn.train and the modules it imports) differs" in caplog.text
    assert f"{digest[:12]} there, 0123456789ab now" in caplog.text
    new = load_checkpoint(out)["moco"]
    assert _differ(old, new)
    assert load_checkpoint(out)["inputs"]["code"] == "0123456789abcdef"
    clean = tmp_path / "clean" / "model.pt"
    pretrain(MODEL, cfg, store, stats, clean, _cpu())
    _assert_same(new, load_checkpoint(clean)["moco"])


def test_a_rebuilt_store_retrains(tiny_store, tmp_path, steps, caplog):
    """Another store's content (a rebuilt store: its arrays and metadata written again), or
    another manifest, starts afresh; a copy of the same store elsewhere resumes."""
    import shutil

    from ssl_photoz.learn.train import store_digest

    store, stats = tiny_store
    (tmp_path / "rebuilt").mkdir()
    other, _ = _write_store(tmp_path / "rebuilt", seed=1)
    copy = tmp_path / "copy" / "cutouts.zarr"
    shutil.copytree(store, copy)
    assert store_digest(copy) == store_digest(store) != store_digest(other)
    cfg = {**PRETRAIN, "epochs": 1}
    out = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, cfg, store, stats, out, _cpu())
    old = load_checkpoint(out)["moco"]
    caplog.set_level("INFO", logger="ssl_photoz")
    steps.clear()
    pretrain(MODEL, cfg, copy, stats, out, _cpu())  # the same content: resumed, no step
    assert not steps and "resuming after epoch 1" in caplog.text
    caplog.clear()
    pretrain(MODEL, cfg, other, stats, out, _cpu())
    assert "store (the cut-out store and its manifest) differs" in caplog.text
    new = load_checkpoint(out)["moco"]
    assert _differ(old, new)
    clean = tmp_path / "clean" / "model.pt"
    pretrain(MODEL, cfg, other, stats, clean, _cpu())
    _assert_same(new, load_checkpoint(clean)["moco"])
    # The manifest is part of the store's identity: a new one retrains the same store.
    sup = tmp_path / "sup" / "model.pt"
    sup_cfg = {**SUPERVISED, "epochs": 1}
    first = _manifest(tmp_path / "m1" / "manifest.json")
    train_classifier(MODEL, sup_cfg, store, sup, _cpu(), 1.0, 0, manifest=first)
    caplog.clear()
    steps.clear()
    second = _manifest(tmp_path / "m2" / "manifest.json", n_ok=95)
    summary = train_classifier(MODEL, sup_cfg, store, sup, _cpu(), 1.0, 0, manifest=second)
    assert len(steps) == summary["recipe"]["steps_per_epoch"] > 0
    assert "store (the cut-out store and its manifest) differs" in caplog.text


def test_a_checkpoint_that_would_run_a_command_is_not_resumed_nor_run(tiny_store, tmp_path, caplog):
    from test_import_checkpoint import _RunsACommand

    from ssl_photoz.learn.train import plain, save_checkpoint

    store, _ = tiny_store
    marker = tmp_path / "pwned"
    out = tmp_path / "sup" / "model.pt"
    out.parent.mkdir()
    torch.save(
        {"kind": "supervised", "epoch": 0, "x": _RunsACommand(marker)}, out.parent / "checkpoint.pt"
    )
    caplog.set_level("INFO", logger="ssl_photoz")
    train_classifier(MODEL, {**SUPERVISED, "epochs": 1}, store, out, _cpu(), 1.0, 0)
    assert not marker.exists()
    assert "not resumable" in caplog.text and "posix.system" in caplog.text
    assert load_checkpoint(out.parent / "checkpoint.pt")["epoch"] == 0  # trained afresh
    # What we save is plain data: numpy numbers in a history become Python ones.
    history = [{"loss": np.float32(0.5), "n": np.int64(3), "bins": np.arange(2), "ok": np.bool_(1)}]
    save_checkpoint(tmp_path / "h.pt", {"history": plain(history), "t": (1, 2)})
    loaded = load_checkpoint(tmp_path / "h.pt")["history"]
    assert loaded == [{"loss": 0.5, "n": 3, "bins": [0, 1], "ok": True}]
    assert type(loaded[0]["loss"]) is float and type(loaded[0]["n"]) is int
    save_checkpoint(tmp_path / "np.pt", {"history": history})
    with pytest.raises(ValueError, match="refused"):  # what plain() is for
        load_checkpoint(tmp_path / "np.pt")


def _param_group_lrs(checkpoint):
    return {
        g["name"]: g["initial_lr"] for g in load_checkpoint(checkpoint)["optimizer"]["param_groups"]
    }


def test_supervised_runs_train_every_layer_at_one_learning_rate(tiny_store, tmp_path):
    """The authors' supervised baseline has one rate for all layers: a random backbone trained at
    a tenth of the head's rate would handicap it (and bias the label efficiency towards SSL)."""
    store, stats = tiny_store
    cfg = {**SUPERVISED, "epochs": 1}
    s = train_classifier(MODEL, cfg, store, tmp_path / "sup" / "model.pt", _cpu(), 1.0, 0)
    lrs = _param_group_lrs(tmp_path / "sup" / "checkpoint.pt")
    assert set(lrs) == {"backbone", "head"} and set(lrs.values()) == {cfg["lr"]}
    assert s["recipe"]["lr"] == lrs
    # The schedule moved every group alike: the rates stay equal after the steps.
    state = load_checkpoint(tmp_path / "sup" / "checkpoint.pt")["optimizer"]["param_groups"]
    assert len({g["lr"] for g in state}) == 1
    with pytest.raises(ValueError, match="one learning rate"):
        train_classifier(MODEL, FINETUNE, store, tmp_path / "x" / "model.pt", _cpu(), 1.0, 0)
    # Fine-tuning keeps the paper's slower convolutions.
    pre = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    ft = {**FINETUNE, "epochs": 1}
    train_classifier(MODEL, ft, store, tmp_path / "ft" / "model.pt", _cpu(), 1.0, 0, pretrained=pre)
    lrs = _param_group_lrs(tmp_path / "ft" / "checkpoint.pt")
    assert lrs == {"backbone": pytest.approx(0.1 * ft["lr"]), "head": ft["lr"]}


def test_finetune_refuses_a_mismatched_backbone(tiny_store, tmp_path):
    store, stats = tiny_store
    pre = tmp_path / "pre" / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    with pytest.raises(ValueError, match="pretrained with model"):
        train_classifier(
            with_defaults("model", {"arch": "resnet_small", "width": 32}),
            FINETUNE,
            store,
            tmp_path / "x.pt",
            _cpu(),
            1.0,
            0,
            pretrained=pre,
        )


def test_ddp_pretraining_on_two_cpu_processes(tiny_store, tmp_path):
    """torchrun with 2 processes (gloo): MoCo with gathered keys and shuffled BN runs and saves."""
    store, stats = tiny_store
    sections = json.dumps({"model": MODEL, "pretrain": {**PRETRAIN, "epochs": 2}})
    out = tmp_path / "ddp" / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    cmd = [
        str(bin_dir / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(bin_dir / "ssl-photoz"),
        "pretrain",
        "--sections-json",
        sections,
        "--store",
        str(store),
        "--stats",
        str(stats),
        "--out",
        str(out),
        "--summary",
        str(tmp_path / "ddp" / "summary.json"),
        "--device",
        "cpu",
        "--precision",
        "bf16",  # rank 0 resolves it and broadcasts it to rank 1
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = load_checkpoint(out)
    assert len(state["history"]) == 2
    # 72 pretraining images: 36 per rank; the batch of 16 is shared, 8 per rank: 4 steps per
    # epoch, each enqueues the keys of both ranks (16): 2 x 4 x 16 = 128 keys, queue 20 -> 8.
    assert int(state["moco"]["queue_ptr"]) == 128 % 20
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["precision"]["chosen"] == "bf16"
    assert "precision bf16 on cpu (asked: bf16)" in result.stderr
    recipe = summary["recipe"]
    assert (recipe["world_size"], recipe["per_process_batch"], recipe["effective_batch"]) == (
        2,
        8,
        16,
    )
    assert recipe["lr"] == {"all": PRETRAIN["lr"]}
    assert recipe["steps_per_epoch"] == 4


@torch.no_grad()
def _fit_on_training_set(checkpoint, store, cfg, fraction=1.0):
    """Cross-entropy per sample on the training objects (centre crops, eval mode), the entropy
    of their label histogram (the loss of the best constant guess), and corr(z_p, z)."""
    from ssl_photoz.learn import augment, data, models

    net = models.RedshiftClassifier(
        models.build_backbone(MODEL["arch"], width=MODEL["width"]),
        n_bins=cfg["n_bins"],
        z_min=cfg["z_min"],
        z_max=cfg["z_max"],
    )
    net.load_state_dict(load_checkpoint(checkpoint)["model"])
    net.eval()
    opened = data.open_store(store)
    train = data.CutoutDataset(
        store, data.labeled_indices(opened, "train", fraction=fraction), deredden=True
    )
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=len(train))))
    logits = net(augment.EvalTransform()(batch["image"]))
    target = net.z_to_bin(batch["z"])
    loss = float(torch.nn.functional.cross_entropy(logits, target))
    counts = torch.bincount(target, minlength=cfg["n_bins"]).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log()).sum())
    corr = float(np.corrcoef(batch["z"].numpy(), net.expected_z(logits).numpy())[0, 1])
    return loss, entropy, corr


def test_a_classifier_fits_its_training_set_far_better_than_the_label_histogram(
    tiny_store, tmp_path
):
    """A trained classifier must beat the constant guess of the label histogram on its own
    training set (z is written into the images' size and colour here). The demo's supervised
    runs once scored 3.90 against 3.92 for the histogram: no better than a constant."""
    store, stats = tiny_store
    cfg = {**SUPERVISED, "epochs": 30, "lr": 0.01}  # the demo's rate; 3 steps an epoch here
    out = tmp_path / "sup" / "model.pt"
    summary = train_classifier(MODEL, cfg, store, out, _cpu(), 1.0, 0)
    loss, entropy, corr = _fit_on_training_set(out, store, cfg)
    print(f"fit: loss {loss:.3f}, label-histogram entropy {entropy:.3f}, corr {corr:.3f}, "
          f"{summary['recipe']['steps_done']} steps")  # fmt: skip
    # 180 bins of 0.0022 in z: even a sharp photo-z spreads its PDF over a few bins, so the
    # margin is in nats (0.7 nats: the true bin 2x likelier than under the histogram).
    assert loss < entropy - 0.7, (loss, entropy)
    assert corr > 0.95, corr


def test_min_steps_lengthens_a_small_fraction_and_validation_is_sparse(tiny_store, tmp_path):
    """A small label fraction takes enough epochs to reach min_steps (the schedule spans them);
    the validation curve is scored at most MAX_VALIDATIONS times, always at the last epoch."""
    from ssl_photoz.learn.train import MAX_VALIDATIONS, classifier_epochs

    assert classifier_epochs({"epochs": 30}, 1) == 30
    assert classifier_epochs({"epochs": 30, "min_steps": 300}, 1) == 300
    assert classifier_epochs({"epochs": 30, "min_steps": 300}, 61) == 30
    assert classifier_epochs({"epochs": 30, "min_steps": 300}, 7) == 43  # ceil(300 / 7)
    store, _ = tiny_store
    cfg = {**SUPERVISED, "epochs": 2, "min_steps": 60}
    # 48 training galaxies, a quarter of them: 12 -> one step of 12 a epoch -> 60 epochs.
    s = train_classifier(MODEL, cfg, store, tmp_path / "sup" / "model.pt", _cpu(), 0.25, 0)
    assert s["epochs_done"] == 60 and s["recipe"]["steps_done"] == 60
    assert len(s["history"]) == 60
    scored = [h["epoch"] for h in s["history"] if "sigma_mad" in h]
    assert scored[-1] == 59 and len(scored) <= MAX_VALIDATIONS
    assert scored == list(range(2, 60, 3))  # every ceil(60 / 25) = 3rd epoch
    assert load_checkpoint(tmp_path / "sup" / "model.pt")["kind"] == "supervised"


def test_the_model_crop_size_reaches_every_view_and_evaluation(tiny_store, tmp_path, monkeypatch):
    """model.crop_size decides the crop of pretraining views, training crops and evaluation."""
    from ssl_photoz.core.config import crop_size
    from ssl_photoz.learn import augment

    seen = set()
    original = augment.rotate_crop

    def spy(x, angles, shifts, size=64, **kw):
        seen.add(("train", size))
        return original(x, angles, shifts, size, **kw)

    monkeypatch.setattr(augment, "rotate_crop", spy)
    original_centre = augment.center_crop

    def spy_centre(x, size=64):
        seen.add(("eval", size))
        return original_centre(x, size)

    monkeypatch.setattr(augment, "center_crop", spy_centre)
    store, stats = tiny_store
    model = {**MODEL, "crop_size": 40}
    pre = tmp_path / "pre" / "model.pt"
    pretrain(model, {**PRETRAIN, "epochs": 1}, store, stats, pre, _cpu())
    assert seen == {("train", 40)}
    train_classifier(
        model, {**FINETUNE, "epochs": 1}, store, tmp_path / "ft" / "model.pt", _cpu(), 1.0, 0,
        pretrained=pre,
    )  # fmt: skip
    assert seen == {("train", 40), ("eval", 40)}
    assert crop_size({"arch": "resnet50"}) == 64  # the paper's when absent


# -- BYOL: the same loop with another method (pretrain.method) ------------------------------------
BYOL = with_defaults(
    "pretrain",
    {
        **{k: PRETRAIN[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "dim", "seed")},
        "method": "byol",
        "byol": {"tau_base": 0.9, "projector_hidden": 32, "predictor_hidden": 32},
    },
)


def test_byol_pretraining_falls_resumes_exactly_and_feeds_fine_tuning(tiny_store, tmp_path, steps):
    from ssl_photoz.learn.ssl.byol import build_byol

    store, stats = tiny_store
    straight = tmp_path / "straight" / "model.pt"
    cfg = {**BYOL, "epochs": 3}
    summary = pretrain(MODEL, cfg, store, stats, straight, _cpu())
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0], losses
    assert summary["recipe"]["method"] == "byol" and summary["recipe"]["bn"].startswith("plain")
    per_epoch = len(steps) // 3
    state = load_checkpoint(straight)
    assert "byol" in state and "moco" not in state
    byol = build_byol(MODEL, cfg)
    byol.load_state_dict(state["byol"])  # every key, target network included
    _assert_same(byol.online_encoder.state_dict(), state["backbone"])
    resumed = tmp_path / "resumed" / "model.pt"
    pretrain(MODEL, cfg, store, stats, resumed, _cpu(), max_epochs=2)
    steps.clear()
    pretrain(MODEL, cfg, store, stats, resumed, _cpu())
    assert len(steps) == per_epoch  # resumed: epoch 3 only
    _assert_same(state["byol"], load_checkpoint(resumed)["byol"])
    # Fine-tuning starts from the online encoder.
    ft = train_classifier(
        MODEL, {**FINETUNE, "epochs": 1}, store, tmp_path / "ft" / "model.pt", _cpu(), 1.0, 0,
        pretrained=straight,
    )  # fmt: skip
    assert np.isfinite(ft["history"][-1]["sigma_mad"])


def test_an_unknown_pretraining_method_is_refused_naming_the_key_and_the_methods(
    tiny_store, tmp_path
):
    from ssl_photoz.core.config import ConfigError, load_schema, validate_section
    from ssl_photoz.learn import ssl

    store, stats = tiny_store
    names = r"\['byol', 'moco_v2'\]"
    with pytest.raises(ValueError, match=rf"'pretrain.method': 'simclr' .*{names}"):
        pretrain(MODEL, {**PRETRAIN, "method": "simclr"}, store, stats, tmp_path / "m.pt", _cpu())
    with pytest.raises(ConfigError, match="'pretrain.method': 'simclr' is not allowed"):
        validate_section("pretrain", {**PRETRAIN, "method": "simclr"})
    # The schema's choices are the registry's: a method is registered in both or in neither.
    enum = load_schema()["properties"]["pretrain"]["properties"]["method"]["enum"]
    assert sorted(enum) == sorted(ssl.METHODS)
    # BYOL's settings are filled for BYOL only, and refused under MoCo.
    assert "byol" not in with_defaults("pretrain", PRETRAIN)
    assert set(BYOL["byol"]) == {"tau_base", "projector_hidden", "predictor_hidden"}
    with pytest.raises(ConfigError, match="'pretrain.byol' does not apply"):
        validate_section("pretrain", {**PRETRAIN, "byol": {}})
    assert validate_section("pretrain", BYOL) == BYOL  # no MoCo keys needed


def test_ddp_byol_pretraining_on_two_cpu_processes(tiny_store, tmp_path):
    """torchrun with 2 processes (gloo): BYOL with DDP's averaged gradients and each rank's EMA."""
    store, stats = tiny_store
    sections = json.dumps({"model": MODEL, "pretrain": {**BYOL, "epochs": 2}})
    out = tmp_path / "ddp" / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    cmd = [
        str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2",
        str(bin_dir / "ssl-photoz"), "pretrain", "--sections-json", sections,
        "--store", str(store), "--stats", str(stats), "--out", str(out),
        "--summary", str(tmp_path / "ddp" / "summary.json"), "--device", "cpu",
        "--precision", "bf16",  # rank 0 resolves it and broadcasts it to rank 1
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = load_checkpoint(out)
    assert len(state["history"]) == 2 and "byol" in state
    assert all(np.isfinite(h["loss"]) for h in state["history"])
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["precision"]["chosen"] == "bf16"
    assert "precision bf16 on cpu (asked: bf16)" in result.stderr
    recipe = summary["recipe"]
    assert (recipe["world_size"], recipe["per_process_batch"], recipe["effective_batch"]) == (
        2,
        8,
        16,
    )
    assert recipe["lr"] == {"all": BYOL["lr"]} and recipe["steps_per_epoch"] == 4
    assert recipe["method"] == "byol" and recipe["bn"] == "BN per rank"
