"""The CLI verb that imports the paper authors' released models."""

from __future__ import annotations

import torch
from test_models import _authors_resnet50
from torch import nn

from ssl_photoz.cli import main
from ssl_photoz.models import RedshiftClassifier, build_backbone
from ssl_photoz.train import load_checkpoint


def test_import_moco_checkpoint_gives_a_pretrain_checkpoint(tmp_path):
    net = _authors_resnet50(nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128)))
    theirs = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    theirs.update({f"module.encoder_k.{k}": v for k, v in net.state_dict().items()})
    theirs["module.queue"] = torch.randn(128, 16)
    source = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "state_dict": theirs}, source)
    out = tmp_path / "ours.pt"
    assert main(["import-checkpoint", str(source), "--out", str(out)]) == 0
    state = load_checkpoint(out)
    assert state["kind"] == "pretrain" and state["config"]["model"] == {"arch": "resnet50"}
    backbone = build_backbone("resnet50")
    backbone.load_state_dict(state["backbone"])  # loads into our backbone: the layouts agree
    torch.testing.assert_close(backbone.conv1.weight, net.conv1.weight)


def test_import_classifier_and_bad_files(tmp_path):
    net = _authors_resnet50(nn.Linear(2048, 180))
    source = tmp_path / "finetuned.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, source)
    out = tmp_path / "ours.pt"
    assert main(["import-checkpoint", str(source), "--out", str(out)]) == 0
    state = load_checkpoint(out)
    clf = RedshiftClassifier(build_backbone("resnet50"), n_bins=state["n_bins"])
    clf.load_state_dict(state["model"])
    torch.testing.assert_close(clf.head.weight, net.fc.weight)
    missing = main(["import-checkpoint", str(tmp_path / "none.pth"), "--out", str(out)])
    assert missing == 2
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    assert main(["import-checkpoint", str(tmp_path / "junk.pth"), "--out", str(out)]) == 2
