"""A rerun retrains (issue 19 item 3), through real Snakemake: a finished tiny run, pretrain.lr
changed, the fine-tuned models rebuilt. Snakemake reruns the pretraining and the fine-tuning;
each fine-tuning job finds its own finished checkpoint.pt (no declared output, so never
removed; its finetune config unchanged) and must train afresh from the new pretrained model,
not "resume" after its last epoch and save the old weights."""

from __future__ import annotations

import shutil
import time

import torch
import yaml
from conftest import snakemake

from ssl_photoz.learn.train import load_checkpoint


def _weights(path, key: str) -> dict:
    return {k: v.clone() for k, v in load_checkpoint(path)[key].items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_pretraining_retrains_the_fine_tuning_not_the_supervised(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)  # keeps mtimes and .snakemake metadata
    models = run / "results" / "models"
    pretrained = models / "pretrain" / "model.pt"
    finetuned = sorted(models.glob("finetune/*/model.pt"))
    supervised = sorted(models.glob("supervised/*/model.pt"))
    assert len(finetuned) == len(supervised) == 2, (finetuned, supervised)
    targets = [str(p.relative_to(run)) for p in finetuned + supervised]
    # Up to date first (nothing to do, unless the package changed since the fixture ran).
    out = snakemake(run, "--cores", "2", "--profile", "profiles/default", *targets)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert all((p.parent / "checkpoint.pt").exists() for p in finetuned)  # what would resume
    before = {
        "pretrain": _weights(pretrained, "backbone"),
        **{str(p): _weights(p, "model") for p in finetuned + supervised},
    }
    supervised_mtimes = [p.stat().st_mtime_ns for p in supervised]

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["pretrain"]["lr"] = config["pretrain"]["lr"] * 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    out = snakemake(run, "--cores", "2", "--profile", "profiles/default", *targets)
    seconds = time.perf_counter() - start
    print(f"rerun of pretrain + {len(finetuned)} finetune jobs: {seconds:.1f} s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = out.stdout + out.stderr
    assert "rule supervised:" not in ran and "rule pretrain:" in ran, ran[-3000:]

    assert not _same(before["pretrain"], _weights(pretrained, "backbone")), "not retrained"
    for path in finetuned:
        log = (run / "results" / "logs" / "finetune" / f"{path.parent.name}.log").read_text()
        assert "pretrained model differs" in log and "starting afresh" in log, log[-2000:]
        assert "resuming" not in log, log[-2000:]
        # The fine-tuned weights are new (the bug kept them bit-identical).
        assert not _same(before[str(path)], _weights(path, "model")), path
    for path, mtime in zip(supervised, supervised_mtimes, strict=True):
        assert path.stat().st_mtime_ns == mtime, f"{path} was rebuilt"
        assert _same(before[str(path)], _weights(path, "model")), path
