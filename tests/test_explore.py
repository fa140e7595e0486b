"""The galaxy explorer (ssl_photoz.report.explore): its data, the PIT, the sample, and the page in
a real
headless Chromium (skipped where none is installed, unless SSL_PHOTOZ_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, tool_env
from test_data import write_store

from ssl_photoz.core import kinds
from ssl_photoz.core.config import with_defaults
from ssl_photoz.evaluate.predict import write_predictions
from ssl_photoz.learn.data import open_store
from ssl_photoz.report import explore
from ssl_photoz.similarity.embeddings import write_embeddings
from ssl_photoz.similarity.index import write_index
from ssl_photoz.similarity.search import anomalies, query_neighbours

N = 60
Z_MIN, Z_MAX, N_BINS = 0.0, 0.4, 180


def _settings(**changes) -> dict:
    """The page's settings as the schema's defaults give them (64 px crops), with changes."""
    sections = {
        "explore": with_defaults("explore", {}),
        "similarity": with_defaults("similarity", {}),
        "model": with_defaults("model", {"arch": "resnet50"}),
    }
    return {**explore.settings_from_config(sections), **changes}


# --- the PIT --------------------------------------------------------------------------------------


def test_pit_is_the_cdf_at_z_spec():
    flat = np.full((4, N_BINS), 1.0 / N_BINS)
    z = np.array([0.0, 0.1, 0.3337, 0.4])
    np.testing.assert_allclose(explore.pit(flat, z, Z_MIN, Z_MAX), z / 0.4, atol=1e-12)
    spike = np.zeros((3, N_BINS))
    spike[:, 45] = 1.0  # all in [0.1, 0.10222)
    z = np.array([0.099, 0.1 + 0.4 / N_BINS / 4, 0.2])
    np.testing.assert_allclose(explore.pit(spike, z, Z_MIN, Z_MAX), [0.0, 0.25, 1.0], atol=1e-9)
    # outside the bins: 0 or 1; no redshift: NaN; float16 rounding of the sum does not matter
    out = explore.pit(np.float16(flat[:3] * 1.001), np.array([-0.1, 0.9, np.nan]), Z_MIN, Z_MAX)
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0, abs=1e-12) and np.isnan(out[2])
    with pytest.raises(ValueError, match="z_max > z_min"):
        explore.pit(flat, np.zeros(4), 0.4, 0.4)


# --- a synthetic run: store, embeddings + index, predictions ------------------------------------


def _gaussian_pdfs(centres: np.ndarray, width: float = 0.02) -> np.ndarray:
    z = Z_MIN + (np.arange(N_BINS) + 0.5) * (Z_MAX - Z_MIN) / N_BINS
    pdf = np.exp(-0.5 * ((z[None, :] - centres[:, None]) / width) ** 2)
    return pdf / pdf.sum(axis=1, keepdims=True)


def _galaxy_store(path):
    """write_store's layout, with galaxy-like pictures (a blob of a random colour on faint sky)."""
    ok = np.ones(N, bool)
    ok[[4, 31]] = False  # no picture, no embedding, no prediction
    columns, _ = write_store(path, n=N, ok=ok, split=(np.arange(N) % 3).astype(np.int8))
    import zarr

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:107, :107]
    images = zarr.open_array(str(path / "images"), mode="r+")
    for i in np.flatnonzero(ok):
        size = rng.uniform(6, 30)
        blob = np.exp(-((yy - 53) ** 2 + (xx - 53) ** 2) / size)
        colour = rng.uniform(0.3, 3.0, 5)[:, None, None]
        images[i] = (colour * blob + rng.normal(0, 0.02, (5, 107, 107))).astype(np.float32)
    return columns


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A store of 60 objects, their embeddings and index, and two models' predictions."""
    root = tmp_path_factory.mktemp("explore_run")
    store_path = root / "cutouts.zarr"
    _galaxy_store(store_path)
    store = open_store(store_path)
    rows = np.flatnonzero(store.ok)
    split = np.asarray(store.split_codes, dtype=object)[store.split[rows]]
    table = pd.DataFrame(
        {
            "objid": store.objid[rows],
            "ra": store.ra[rows],
            "dec": store.dec[rows],
            "z_spec": store.z_spec[rows],
            "split": split,
        }
    )
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((len(rows), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = root / "similarity" / "embeddings.parquet"
    embeddings.parent.mkdir()
    write_embeddings(embeddings, table, vectors, {"kind": "test"})
    write_index(embeddings)

    val = table[table["split"] == "val"]
    z_spec = val["z_spec"].to_numpy()
    z_phot = z_spec + rng.normal(0, 0.02, len(val))
    predictions = root / "predictions"
    files = [predictions / "finetune_f1.0_s0.parquet", predictions / "colours_knn.parquet"]
    write_predictions(files[0], val["objid"], z_spec, z_phot, _gaussian_pdfs(z_phot), {})
    write_predictions(files[1], val["objid"], z_spec, z_spec + 0.01, None, {})
    return {
        "store": store_path,
        "embeddings": embeddings,
        "predictions": files,
        "val": val,
        "z_phot": z_phot,
        "root": root,
    }


def _page_data(html_path) -> dict:
    text = html_path.read_text(encoding="utf-8")
    found = re.search(
        r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S
    )
    assert found, "the page holds no data"
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def site(synthetic_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "explore" / "index.html"
    summary = explore.build_site(
        synthetic_run["embeddings"],
        synthetic_run["store"],
        synthetic_run["predictions"],
        out,
        Z_MIN,
        Z_MAX,
        **_settings(),
    )
    return out, summary


def test_the_page_holds_every_validation_galaxy_with_its_redshifts(synthetic_run, site):
    out, summary = site
    data = _page_data(out)
    val = synthetic_run["val"]
    assert summary["galaxies"] == summary["validation"] == len(val) == data["n_shown"]
    assert not data["sampled"] and summary["bytes"] == out.stat().st_size
    assert data["models"] == ["finetune_f1.0_s0", "colours_knn"]
    assert data["pdf_models"] == ["finetune_f1.0_s0"] == [data["default_model"]]
    assert data["bins"] == {"z_min": Z_MIN, "z_max": Z_MAX, "n": N_BINS}
    by_id = {g["objid"]: g for g in data["galaxies"]}
    assert set(by_id) == {str(o) for o in val["objid"]}  # strings: objIDs exceed 2**53
    z_phot = dict(zip(val["objid"].astype(str), synthetic_run["z_phot"], strict=True))
    pits = explore.pit(_gaussian_pdfs(synthetic_run["z_phot"]), val["z_spec"], Z_MIN, Z_MAX)
    for (objid, z_spec), want_pit in zip(
        zip(val["objid"].astype(str), val["z_spec"], strict=True), pits, strict=True
    ):
        g = by_id[objid]
        assert g["z_spec"] == pytest.approx(z_spec, abs=1e-5)
        assert g["z_p"]["finetune_f1.0_s0"] == pytest.approx(z_phot[objid], abs=1e-5)
        assert g["dz"]["colours_knn"] == pytest.approx(0.01 / (1 + z_spec), abs=1e-5)
        assert g["pit"]["finetune_f1.0_s0"] == pytest.approx(want_pit, abs=1e-4)
        assert "colours_knn" not in g["pit"] and "colours_knn" not in g["pdf"]
        levels = np.frombuffer(base64.b64decode(g["pdf"]["finetune_f1.0_s0"]), np.uint8)
        assert len(levels) == N_BINS and levels.max() == 255


def test_neighbours_and_anomaly_scores_are_the_search_modules(synthetic_run, site):
    data = _page_data(site[0])
    emb_path = synthetic_run["embeddings"]
    from ssl_photoz.similarity.embeddings import load_embeddings

    emb = load_embeddings(emb_path)
    every = anomalies(emb.vectors, k=10, n=len(emb.vectors), catalog=emb.table)
    score = dict(zip(every["objid"].astype(str), every["kth_distance"], strict=True))
    for g in data["galaxies"]:
        want = query_neighbours(emb_path, objid=int(g["objid"]), k=5, pool="train")
        assert [n["objid"] for n in g["neighbours"]] == want["objid"].astype(str).tolist()
        got_z = [n["z_spec"] for n in g["neighbours"]]
        np.testing.assert_allclose(got_z, want["z_spec"], atol=1e-5)
        np.testing.assert_allclose(
            [n["distance"] for n in g["neighbours"]], want["distance"], atol=1e-4
        )
        assert g["anomaly"] == pytest.approx(score[g["objid"]], abs=1e-4)


def test_every_picture_is_the_gri_centre_crop_as_jpeg(synthetic_run, site):
    from PIL import Image

    from ssl_photoz.cutouts.pictures import gri_image, store_cutouts

    data = _page_data(site[0])
    wanted = {g["objid"] for g in data["galaxies"]}
    wanted |= {n["objid"] for g in data["galaxies"] for n in g["neighbours"]}
    assert set(data["images"]) == wanted
    objid = data["galaxies"][0]["objid"]
    picture = Image.open(io.BytesIO(base64.b64decode(data["images"][objid])))
    assert picture.format == "JPEG" and picture.size == (64, 64)
    cutout = store_cutouts(synthetic_run["store"], [int(objid)])[0]
    want = gri_image(cutout[:, 21:85, 21:85]) * 255
    assert np.abs(np.asarray(picture, float) - want).mean() < 6  # JPEG's loss only (q 90, 4:4:4)


def test_above_max_galaxies_the_page_holds_a_seeded_sample_and_says_so(synthetic_run, tmp_path):
    args = (synthetic_run["embeddings"], synthetic_run["store"], synthetic_run["predictions"])
    first = explore.build_site(
        *args, tmp_path / "a.html", Z_MIN, Z_MAX, **_settings(max_galaxies=4)
    )
    explore.build_site(
        *args, tmp_path / "b.html", Z_MIN, Z_MAX, **_settings(max_galaxies=4, neighbours=3)
    )
    a, b = _page_data(tmp_path / "a.html"), _page_data(tmp_path / "b.html")
    assert first["galaxies"] == a["n_shown"] == 4 and a["sampled"]
    assert a["n_validation"] == len(synthetic_run["val"]) and a["max_galaxies"] == 4
    assert [g["objid"] for g in a["galaxies"]] == [g["objid"] for g in b["galaxies"]]  # seeded
    assert all(len(g["neighbours"]) == 3 for g in b["galaxies"])
    # The page's script writes the note; its words are in the script, its numbers in the data.
    assert "random sample" in (tmp_path / "a.html").read_text()
    with pytest.raises(ValueError, match=r"unknown \['max_galaxy'\]"):
        explore.build_site(*args, tmp_path / "c.html", Z_MIN, Z_MAX, **_settings(), max_galaxy=4)
    with pytest.raises(ValueError, match=r"missing \['crop_size'\]"):
        settings = _settings()
        settings.pop("crop_size")
        explore.build_site(*args, tmp_path / "c.html", Z_MIN, Z_MAX, **settings)


def test_the_pictures_follow_the_networks_crop(synthetic_run, tmp_path):
    from PIL import Image

    args = (synthetic_run["embeddings"], synthetic_run["store"], synthetic_run["predictions"])
    explore.build_site(*args, tmp_path / "a.html", Z_MIN, Z_MAX, **_settings(crop_size=48))
    data = _page_data(tmp_path / "a.html")
    assert data["thumb_px"] == 48
    picture = Image.open(io.BytesIO(base64.b64decode(next(iter(data["images"].values())))))
    assert picture.size == (48, 48)


def test_the_page_is_self_contained(site):
    text = site[0].read_text(encoding="utf-8")
    assert site[1]["bytes"] < 20_000_000
    # Nothing to fetch: no external script, style, image or font.
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text)
    assert "/*EXPLORER_" not in text  # every placeholder filled
    assert text.count("<script") == 2  # the data and the inlined script


def test_registered_kinds_without_predictions_are_left_out(synthetic_run, tmp_path, monkeypatch):
    """Only the fine-tuned network and the colours kNN ran: the supervised network and a kind
    registered at run time (an image kind with PDFs, ordered first) have no predictions, and the
    page shows the two that ran, the network first, and nothing of the others."""
    first = dataclasses.replace(kinds.get("finetune"), name="byol_ft", label="BYOL + fine-tune")
    monkeypatch.setattr(kinds, "KINDS", (first, *kinds.KINDS))
    args = (synthetic_run["embeddings"], synthetic_run["store"], synthetic_run["predictions"])
    explore.build_site(*args, tmp_path / "a.html", Z_MIN, Z_MAX, **_settings(max_galaxies=6))
    data = _page_data(tmp_path / "a.html")
    assert data["models"] == ["finetune_f1.0_s0", "colours_knn"]
    assert data["pdf_models"] == ["finetune_f1.0_s0"] == [data["default_model"]]
    for galaxy in data["galaxies"]:
        assert list(galaxy["z_p"]) == data["models"] and list(galaxy["pdf"]) == data["pdf_models"]


def test_cli_verb_writes_the_page(synthetic_run, tmp_path):
    out = tmp_path / "explore" / "index.html"
    sections = {
        "explore": {"max_galaxies": 5},
        "similarity": {"neighbours": 2},
        "model": {"arch": "resnet_small", "width": 16, "crop_size": 48},
        "finetune": _finetune_section(),
    }
    result = subprocess.run(
        [
            str(BIN / "ssl-photoz"),
            "explore",
            "--sections-json",
            json.dumps(sections),
            "--embeddings",
            str(synthetic_run["embeddings"]),
            "--store",
            str(synthetic_run["store"]),
            "--predictions",
            *map(str, synthetic_run["predictions"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"5 of {len(synthetic_run['val'])} validation galaxies" in result.stdout
    data = _page_data(out)
    assert data["thumb_px"] == 48 and data["k"] == 2  # the model's crop, similarity's neighbours
    assert data["anomaly_k"] == with_defaults("similarity", {})["anomaly_k"]
    bad = {**sections, "explore": {"max_galaxies": 0}}
    result = subprocess.run(
        [
            str(BIN / "ssl-photoz"),
            "explore",
            "--sections-json",
            json.dumps(bad),
            "--embeddings",
            "e",
            "--store",
            "s",
            "--predictions",
            "p",
            "--out",
            str(tmp_path / "x.html"),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert result.returncode == 2 and "explore.max_galaxies" in result.stderr


def _finetune_section() -> dict:
    import yaml
    from conftest import PROJECT_ROOT

    return yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())["finetune"]


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def _no_browser(reason: str):
    if os.environ.get("SSL_PHOTOZ_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SSL_PHOTOZ_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason + " (scripts/browser/install_chromium.sh installs it)")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium under selenium, with a fresh profile; no network features."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _no_browser("selenium is not installed (pip install -e .[dev])")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _no_browser("no chromium and chromedriver on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _similar(embeddings, objid: int) -> pd.DataFrame:
    """`ssl-photoz similar EMBEDDINGS --objid OBJID` as a table (objid, z_spec, distance)."""
    out = subprocess.run(
        [str(BIN / "ssl-photoz"), "similar", str(embeddings), "--objid", str(objid)],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    header = lines[1].split()
    assert header == ["objid", "ra", "dec", "z_spec", "split", "distance"], out.stdout
    rows = [line.split() for line in lines[2:]]
    return pd.DataFrame(
        {
            "objid": [r[0] for r in rows],
            "z_spec": [float(r[3]) for r in rows],
            "distance": [float(r[5]) for r in rows],
        }
    )


def _search_in_page(driver, html, query: str, objid: str, screenshot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(html.resolve().as_uri())
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    wait.until(
        lambda d: d.execute_script(
            "const e = document.getElementById('detail');"
            "return !e.hidden && e.dataset.objid === arguments[0];",
            objid,
        )
    )
    wait.until(
        lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('#detail img'))"
            ".every(i => i.complete && i.naturalWidth > 0);"
        )
    )
    cards = driver.execute_script(
        "return Array.from(document.querySelectorAll('#neighbours .neighbour')).map(c => {"
        "  const img = c.querySelector('img');"
        "  return {objid: c.dataset.objid, z: c.dataset.zSpec, text: c.innerText,"
        "          shown: img.naturalWidth > 0 && img.getBoundingClientRect().width > 0,"
        "          picture: img.dataset.objid};"
        "});"
    )
    status = driver.find_element(By.ID, "search-status").text
    pdf_lines = len(driver.find_elements(By.CSS_SELECTOR, "#pdf-plot polyline"))
    driver.save_screenshot(str(screenshot))
    print(f"explorer screenshot: {screenshot}")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    return cards, status, pdf_lines


def _check_cards(cards, similar: pd.DataFrame):
    assert [c["objid"] for c in cards] == similar["objid"].tolist()
    for card, row in zip(cards, similar.itertuples(), strict=True):
        assert card["shown"] and card["picture"] == card["objid"]
        assert float(card["z"]) == pytest.approx(row.z_spec, abs=1e-4)
        # The card shows them to 4 and 3 decimals (the CLI's print has 6: compare as numbers).
        shown = dict(re.findall(r"^([zd])=([0-9.]+)$", card["text"], re.M))
        assert float(shown["z"]) == pytest.approx(row.z_spec, abs=0.5e-4 + 1e-6)
        assert float(shown["d"]) == pytest.approx(row.distance, abs=0.5e-3 + 1e-6)


def test_browser_search_by_objid_and_position_shows_the_neighbours(
    browser, synthetic_run, site, tmp_path
):
    html = site[0]
    data = _page_data(html)
    galaxy = data["galaxies"][2]
    objid = galaxy["objid"]
    cards, status, pdf_lines = _search_in_page(
        browser, html, objid, objid, tmp_path / "explorer_objid.png"
    )
    assert status == f"objid {objid}"
    _check_cards(cards, _similar(synthetic_run["embeddings"], int(objid)))
    assert pdf_lines == 1  # the one model with a PDF
    # By position, 1 arcsec off in dec; and a position with nothing near.
    query = f"{galaxy['ra']} {galaxy['dec'] + 1 / 3600}"
    cards, status, _ = _search_in_page(browser, html, query, objid, tmp_path / "explorer_pos.png")
    assert status.startswith(f"objid {objid}, 1.0") and len(cards) == 5
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.ID, "search")
    box.clear()
    box.send_keys("42", Keys.ENTER)
    assert (
        "not among the galaxies on this page" in browser.find_element(By.ID, "search-status").text
    )
    # A click on a column header sorts the table (by anomaly score, then the other way).
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="anomaly"]').click()
    order = browser.execute_script(
        "return Array.from(document.querySelectorAll('#rows tr')).map(r => r.dataset.objid);"
    )
    by_score = sorted(data["galaxies"], key=lambda g: g["anomaly"])
    assert order == [g["objid"] for g in by_score]


def test_browser_on_the_tiny_run_matches_ssl_photoz_similar(browser, tiny_run, tmp_path):
    html = tiny_run / "results" / "explore" / "index.html"
    assert html.exists(), "the tiny DAG did not write the explorer"
    assert html.stat().st_size < 20_000_000
    print(f"explorer of the tiny run: {html.stat().st_size / 1e6:.2f} MB")
    data = _page_data(html)
    assert data["n_shown"] == data["n_validation"] > 0 and not data["sampled"]
    files = sorted((tiny_run / "results" / "predictions").glob("*.parquet"))
    assert data["models"][0] == "finetune_f1.0_s0" and set(data["models"]) == {
        f.stem for f in files
    }
    classifiers = [f.stem for f in files if f.stem.startswith(("finetune_", "supervised_"))]
    assert sorted(data["pdf_models"]) == classifiers and len(classifiers) == 4
    galaxy = max(data["galaxies"], key=lambda g: g["anomaly"])
    objid = galaxy["objid"]
    cards, status, pdf_lines = _search_in_page(
        browser, html, objid, objid, tmp_path / "explorer.png"
    )
    embeddings = tiny_run / "results" / "similarity" / "embeddings.parquet"
    _check_cards(cards, _similar(embeddings, int(objid)))
    assert pdf_lines == 4
