"""The fine-tuning arms (ssl_photoz.core.arms), the optimiser recipes (ssl_photoz.learn.optim)
and the choice of the headline arm on the held-out slice of the training labels (issue 23)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import FINETUNE, MODEL, PRETRAIN, SUPERVISED, _cpu, _write_store

from ssl_photoz.core import arms, holdout, kinds
from ssl_photoz.core.config import with_defaults
from ssl_photoz.learn import optim
from ssl_photoz.learn.data import open_store
from ssl_photoz.learn.train import load_checkpoint, pretrain, train_classifier
from ssl_photoz.report import arm_selection


def _arm(name: str, **over) -> dict:
    """The CLI's recipe of arm ``name``: the finetune section as the arm reads it, plus ``arm``."""
    section = with_defaults("finetune", {**FINETUNE, **over})
    return {**arms.recipe(section, name), "arm": name}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """test_train's 96 synthetic galaxies."""
    return _write_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def pretrained(tiny_store, tmp_path_factory):
    store, stats = tiny_store
    path = tmp_path_factory.mktemp("pre") / "model.pt"
    pretrain(MODEL, {**PRETRAIN, "epochs": 1}, store, stats, path, _cpu())
    return path


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def _pretrained_backbone(path) -> dict:
    return {f"backbone.{k}": v for k, v in load_checkpoint(path)["backbone"].items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arm", arms.names())
def test_each_arm_trains_its_loss_falling(tiny_store, pretrained, tmp_path, arm):
    store, _ = tiny_store
    cfg = _arm(arm, epochs=6, lr=0.01)
    s = train_classifier(MODEL, cfg, store, tmp_path / "m" / "model.pt", _cpu(), 1.0, 0, pretrained)
    losses = [r["loss"] for r in s["history"]]
    assert s["arm"] == arm and s["recipe"]["arm"] == arm
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("hidden", [0, 8])
def test_the_frozen_arm_leaves_every_backbone_weight_and_statistic(
    tiny_store, pretrained, tmp_path, hidden
):
    """Weights and batch-norm running statistics stay the pretrained ones; the head (linear, or
    an MLP of ``probe_hidden`` units) learns, and predict rebuilds it from the model file."""
    store, _ = tiny_store
    out = tmp_path / "m" / "model.pt"
    cfg = _arm("frozen", epochs=2, probe_hidden=hidden)
    s = train_classifier(MODEL, cfg, store, out, _cpu(), 1.0, 0, pretrained)
    final = load_checkpoint(out)
    assert _same(_backbone(final["model"]), _pretrained_backbone(pretrained))
    assert any("running_mean" in k for k in _backbone(final["model"]))
    assert s["recipe"]["head_epochs"] == s["epochs_done"] == 2
    assert final["head_hidden"] == hidden
    assert ("head.0.weight" in final["model"]) == bool(hidden)
    from ssl_photoz.evaluate.predict import predict_classifier

    assert predict_classifier(out, store, tmp_path / "p.parquet") == 24


def test_lpft_freezes_the_backbone_for_its_head_phase_then_trains_it(
    tiny_store, pretrained, tmp_path
):
    store, _ = tiny_store
    out = tmp_path / "m" / "model.pt"
    cfg = _arm("lpft", epochs=4, lpft_head_fraction=0.5)
    start = _pretrained_backbone(pretrained)
    for epoch in range(4):
        s = train_classifier(
            MODEL, cfg, store, out, _cpu(), 1.0, 0, pretrained, max_epochs=epoch + 1
        )
        now = _backbone(load_checkpoint(out.parent / "checkpoint.pt")["model"])
        assert _same(now, start) == (epoch < 2), epoch  # frozen in epochs 0 and 1 only
    assert s["recipe"]["head_epochs"] == 2
    # Each phase has its own schedule: the rate is back at its start in the first step of phase 2.
    factor = optim.phase_factor(cfg, [0, 2 * 10], 4 * 10)
    assert factor(0) == factor(20) == 1.0 and factor(19) < 0.05 and factor(39) < 0.05
    # An arm with no head phase (full) trains the backbone from the first epoch.
    full = tmp_path / "full" / "model.pt"
    train_classifier(MODEL, _arm("full", epochs=1), store, full, _cpu(), 1.0, 0, pretrained)
    assert not _same(_backbone(load_checkpoint(full)["model"]), start)


def test_sgd_follows_the_authors_steps_scaled_to_the_run(tiny_store, pretrained, tmp_path):
    """SGD, momentum 0.9, x0.1 at 60 % and 90 % of the epochs (the released code's 60 and 90 of
    100), per step at the epoch boundaries."""
    cfg = _arm("full", optimizer="sgd", lr=0.004, epochs=10)
    assert cfg["sgd"] == {"momentum": 0.9, "milestones": [0.6, 0.9], "gamma": 0.1}
    factor = optim.phase_factor(cfg, [0], 1000)
    assert [factor(s) for s in (0, 599, 600, 899, 900, 999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    store, _ = tiny_store
    out = tmp_path / "m" / "model.pt"
    rates = []
    for epochs_done in (6, 7, 9, 10):
        s = train_classifier(
            MODEL, cfg, store, out, _cpu(), 1.0, 0, pretrained, max_epochs=epochs_done
        )
        state = load_checkpoint(out.parent / "checkpoint.pt")["optimizer"]
        rates.append({g["name"]: g["lr"] for g in state["param_groups"]}["head"])
        assert state["param_groups"][0]["momentum"] == 0.9
    # After epoch 6 of 10 the next step is at 60 %: x0.1; after 9, at 90 %: x0.01.
    assert rates == pytest.approx([0.0004, 0.0004, 0.00004, 0.00004])
    assert s["recipe"]["optimizer"] == "SGD (momentum 0.9)"
    # The supervised baseline keeps its own recipe (Adam by default).
    assert SUPERVISED["optimizer"] == "adam"


def test_an_arm_recipe_holds_its_own_settings_only():
    """A change to the list of arms or to a setting another arm reads leaves a recipe as it
    was (so the rule reruns no finished arm); SGD's settings count only for SGD."""
    base = with_defaults("finetune", dict(FINETUNE))
    more = {**base, "arms": ["full", "lpft", "frozen"], "lpft_head_fraction": 0.3}
    assert arms.recipe(base, "full") == arms.recipe(more, "full")
    assert arms.recipe(base, "frozen") == arms.recipe(more, "frozen")
    assert arms.recipe(base, "lpft") != arms.recipe(more, "lpft")
    assert "sgd" not in arms.recipe(base, "full")
    assert arms.recipe({**base, "optimizer": "sgd"}, "full")["sgd"] == base["sgd"]
    assert with_defaults("finetune", arms.recipe(more, "frozen"))  # still a valid section
    assert [kinds.get(a.kind).arm for a in arms.ARMS] == arms.names()
    assert kinds.get("finetune").arm == "full"  # the paper's arm keeps its outputs' paths


def test_the_arm_kinds_name_no_pretraining_method():
    """The method is pretrain.method's (MoCo v2 or BYOL): a kind's texts must not claim one."""
    for arm in arms.ARMS:
        kind = kinds.get(arm.kind)
        texts = (kind.label, kind.summary_name, kind.fraction_column, kind.report_name)
        assert not any(m in t for t in texts for m in ("MoCo", "BYOL")), texts
    assert kinds.get("finetune").label == "self-supervised + full fine-tune"


def test_the_heldout_slice_is_left_out_and_scored(tiny_store, pretrained, tmp_path):
    store, _ = tiny_store
    ids = open_store(store).objid
    sliced = holdout.in_slice(ids, 0.3)
    assert 0 < sliced.sum() < len(ids)
    # The slice is a property of the object: nested across fractions, the same for any seed.
    assert np.array_equal(holdout.in_slice(ids[:40], 0.3), sliced[:40])
    cfg = _arm("full", epochs=1)
    whole = train_classifier(
        MODEL, cfg, store, tmp_path / "a" / "model.pt", _cpu(), 1.0, 0, pretrained
    )
    cut = train_classifier(
        MODEL, cfg, store, tmp_path / "b" / "model.pt", _cpu(), 1.0, 0, pretrained, heldout=0.3
    )
    assert "heldout" not in whole and cut["heldout"]["val_n"] > 0
    assert cut["n_train"] + cut["heldout"]["val_n"] == whole["n_train"]
    assert cut["n_val"] == whole["n_val"]  # validation untouched


def _runs(scores: dict) -> dict:
    """Training summaries of arm -> fraction -> seeds' held-out sigma_MAD (validation far off)."""
    return {
        f"{arms.get(arm).kind}/f{f}_s{seed}": {
            "kind": "finetune",
            "arm": arm,
            "fraction": f,
            "seed": seed,
            "heldout": {"sigma_mad": value},
            "history": [{"sigma_mad": 1.0 - value}],  # validation ranks the arms the other way
        }
        for arm, by_f in scores.items()
        for f, values in by_f.items()
        for seed, value in enumerate(values)
    }


def test_the_headline_arm_is_chosen_on_the_heldout_slice_never_on_validation():
    scores = {
        "full": {0.1: [0.030, 0.034], 1.0: [0.012]},
        "lpft": {0.1: [0.028, 0.029], 1.0: [0.0125]},
        "frozen": {0.1: [0.040], 1.0: [0.020]},
    }
    training = _runs(scores)
    got = arm_selection.choose(["full", "lpft", "frozen"], arm_selection.heldout_scores(training))
    # Geometric means: full sqrt(0.032 x 0.012), lpft sqrt(0.0285 x 0.0125): lpft.
    assert got["headline"] == "lpft"
    assert got["geomean"]["full"] == pytest.approx((0.032 * 0.012) ** 0.5)
    # Validation (the history) would pick frozen; the choice did not move with it.
    for run in training.values():
        run["history"] = [{"sigma_mad": 0.0}]
    assert (
        arm_selection.choose(["full", "lpft", "frozen"], arm_selection.heldout_scores(training))
        == got
    )
    # An arm without a held-out score at some fraction: no headline, said so.
    del training["finetune_frozen/f1.0_s0"]
    none = arm_selection.choose(["full", "lpft", "frozen"], arm_selection.heldout_scores(training))
    assert none["headline"] is None and "frozen" in none["why"]
    assert arm_selection.choose(["full"], {})["headline"] == "full"
    # A slice of one galaxy scores sigma_MAD 0: a geometric mean of 0, not an error.
    zero = arm_selection.choose(["full", "lpft"], {"full": {1.0: [0.0]}, "lpft": {1.0: [0.01]}})
    assert zero["headline"] == "full" and zero["geomean"]["full"] == 0.0
    text = "\n".join(
        arm_selection.section(
            {"finetune": {"arms": ["full", "lpft"]}, "arm_selection": {"holdout": 0.1}},
            _runs({k: scores[k] for k in ("full", "lpft")}),
        )
    )
    assert "**Headline arm: lpft**" in text and "| lpft | 0.02850 | 0.01250 |" in text


def test_the_catalogue_baselines_leave_the_same_slice_out():
    """Every model of a fraction learns from the same galaxies: the baselines too."""
    from ssl_photoz.baselines.run import label_split

    rng = np.random.default_rng(0)
    n = 2000
    objects = pd.DataFrame(
        {
            "objid": np.arange(n, dtype=np.int64) + 10**17,
            "split": np.where(np.arange(n) % 5 == 0, "val", "train"),
            "z_spec": rng.uniform(0.01, 0.3, n),
            "fraction_rank": rng.uniform(0, 1, n),
        }
    )
    train, val = label_split(objects, 0.5)
    cut, val_cut = label_split(objects, 0.5, heldout=0.1)
    sliced = holdout.in_slice(objects["objid"].to_numpy(), 0.1)
    assert np.array_equal(cut, train & ~sliced) and np.array_equal(val_cut, val)
    assert 0.05 < (train & sliced).sum() / train.sum() < 0.15


def test_fig2_draws_every_arm_that_ran(tmp_path, drawn_figures):
    """Each arm's runs are a curve of their own in Fig. 2 (the kinds of the metrics summary)."""
    from test_figures import _metrics, _summary

    from ssl_photoz.report import figures

    metrics = _metrics()
    extra = []
    for arm_kind, scale in (("finetune_lpft", 1.1), ("finetune_frozen", 1.5)):
        rows = metrics[metrics["kind"] == "finetune"].copy()
        rows["kind"], rows["sigma_mad"] = arm_kind, rows["sigma_mad"] * scale
        rows["model"] = rows["model"].str.replace("finetune_", f"{arm_kind}_", n=1)
        extra.append(rows)
    summary = _summary(pd.concat([metrics, *extra], ignore_index=True))
    path = tmp_path / "summary.tsv"
    summary.to_csv(path, sep="\t", index=False)
    figures.plot_sigma_vs_fraction(path, tmp_path / "fig2.png", paper=False)
    legend = [t.get_text() for t in drawn_figures["fig2.png"].legends[0].get_texts()]
    for arm in arms.ARMS:
        assert f"{kinds.get(arm.kind).label}: mean, bars = std of 3 seeds" in legend, legend
