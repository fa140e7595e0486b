"""The per-stage code digest: which modules count, and which edits change it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

from ssl_photoz.core.codehash import code_digest, module_closure


def test_closure_follows_imports_inside_functions_and_parent_packages():
    closure = module_closure("ssl_photoz.learn.train")
    assert {"ssl_photoz.learn.models", "ssl_photoz.learn.augment", "ssl_photoz.learn.data"} <= set(
        closure
    )
    assert not any(m.startswith("ssl_photoz.surveys.sdss.sky") for m in closure)
    assert "ssl_photoz.cli" not in closure
    sky = module_closure("ssl_photoz.surveys.sdss.sky.survey")
    assert "ssl_photoz.surveys.sdss.sky" in sky and "ssl_photoz.surveys.sdss.sky.render" in sky


def test_computing_the_digest_imports_nothing_heavy():
    code = (
        "import sys; from ssl_photoz.core.codehash import code_digest; "
        "code_digest('ssl_photoz.learn.train', 'ssl_photoz.cutouts.cut'); "
        "print(sorted(m for m in ('torch', 'zarr', 'ssl_photoz.learn.train') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_module_is_an_error():
    with pytest.raises(ModuleNotFoundError, match="ssl_photoz.nope"):
        code_digest("ssl_photoz.nope")
    with pytest.raises(ValueError, match="not a module of ssl_photoz"):
        module_closure("numpy")


def _digests_of_a_copy(
    tmp_path, edit: str | None, module: str = "learn/models.py"
) -> dict[str, str]:
    copy = tmp_path / "src"
    shutil.copytree(PROJECT_ROOT / "src" / "ssl_photoz", copy / "ssl_photoz")
    if edit is not None:
        path = copy / "ssl_photoz" / module
        path.write_text(path.read_text() + edit)
    code = (
        "import json; from ssl_photoz.core.codehash import code_digest; print(json.dumps({m: "
        "code_digest(m) for m in ('ssl_photoz.learn.train', 'ssl_photoz.evaluate.scores', "
        "'ssl_photoz.catalog.select')"
        "}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(copy), "PATH": ""},
    )
    return json.loads(out.stdout)


def test_an_edit_changes_the_digests_of_the_stages_that_import_it_only(tmp_path):
    before = _digests_of_a_copy(tmp_path / "a", None)
    assert before["ssl_photoz.learn.train"] == code_digest("ssl_photoz.learn.train")
    comment = _digests_of_a_copy(tmp_path / "b", "\n# only a comment\n")
    assert comment == before
    code = _digests_of_a_copy(tmp_path / "c", "\nNEW_CONSTANT = 1\n")
    assert (
        code["ssl_photoz.learn.train"] != before["ssl_photoz.learn.train"]
    )  # train imports models
    assert code["ssl_photoz.evaluate.scores"] == before["ssl_photoz.evaluate.scores"]
    assert code["ssl_photoz.catalog.select"] == before["ssl_photoz.catalog.select"]
