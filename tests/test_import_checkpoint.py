"""The CLI verb that imports the paper authors' released models."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
from test_models import _authors_resnet50
from torch import nn

from ssl_photoz.cli import main
from ssl_photoz.learn.models import RedshiftClassifier, build_backbone
from ssl_photoz.learn.train import load_checkpoint


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


def test_import_a_moco_style_file_with_its_arguments_and_numpy_scalars(tmp_path):
    """MoCo's main_moco.py saves epoch, arch, state_dict and optimizer; such scripts often add
    the run's argparse.Namespace and numpy numbers: allow-listed, loaded with weights_only."""
    net = _authors_resnet50(nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128)))
    theirs = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)
    source = tmp_path / "checkpoint_0199.pth.tar"
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": theirs,
            "optimizer": optimizer.state_dict(),
            "args": argparse.Namespace(lr=0.03, moco_k=65536, moco_t=0.2, mlp=True),
            "best_loss": np.float64(6.25),
            "steps": np.int64(1000),
        },
        source,
    )
    out = tmp_path / "ours.pt"
    assert main(["import-checkpoint", str(source), "--out", str(out)]) == 0
    backbone = build_backbone("resnet50")
    backbone.load_state_dict(load_checkpoint(out)["backbone"])
    torch.testing.assert_close(backbone.conv1.weight, net.conv1.weight)


class _RunsACommand:
    """A pickle that, loaded without weights_only, calls os.system (here: creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_file_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, capsys, zipped):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth.tar"
    weights = {"conv1.weight": torch.zeros(64, 5, 7, 7)}
    torch.save(
        {"state_dict": weights, "extra": _RunsACommand(marker)},
        source,
        _use_new_zipfile_serialization=zipped,
    )
    # Our own checkpoints (predict, probe, embed, finetune's pretrained model, resume):
    with pytest.raises(ValueError, match=r"evil\.pth\.tar: refused: .*posix\.system"):
        load_checkpoint(source)
    # The authors' released files:
    out = tmp_path / "ours.pt"
    assert main(["import-checkpoint", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evil.pth.tar: refused" in err and "posix.system" in err and "nothing" in err
    assert not out.exists()
    assert not marker.exists(), "the pickle's command ran"
    # The file is live: loading it the unsafe way runs the command.
    torch.load(source, weights_only=False)
    assert marker.exists()
