"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import json

import pytest

from ssl_photoz.core.atomic import atomic_path, write_json


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "data.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["data.json"]


def test_write_json_handles_numpy_scalars(tmp_path):
    import numpy as np

    write_json(tmp_path / "x.json", {"v": np.float32(0.5), "n": np.int64(3)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": 0.5, "n": 3}
    assert '"n": 3' in (tmp_path / "x.json").read_text()
