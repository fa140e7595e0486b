"""Catalogue queries: one T-SQL file per sample, transpiled for DuckDB, templated for SkyServer."""

from __future__ import annotations

import hashlib
import json
import re
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from labeled_reference import labeled_specobjids
from loopback_server import LoopbackServer, Reply

from ssl_photoz.surveys.sdss.query.run import objid_edges, run_duckdb, run_query, write_query_output
from ssl_photoz.surveys.sdss.query.sql import load_query, transpile_to_duckdb

DUCKDB_CFG = {"backend": "duckdb", "data_release": 12}


def test_transpile_turns_select_into_into_create_table_quickly():
    started = time.perf_counter()
    for sample in ("labeled", "unlabeled"):
        query = load_query(sample)
        sql = query.for_duckdb()
        assert sql.startswith("CREATE TABLE MyDB.ssl_photoz_") or "CREATE TABLE MyDB." in sql
        assert " INTO " not in sql.upper().split("CREATE TABLE")[1]
    assert time.perf_counter() - started < 1.0  # the budget for the transpile


def test_skyserver_template_drops_into_and_adds_the_range_placeholder():
    sql = load_query("labeled").for_skyserver()
    assert "INTO MYDB" not in sql.upper()
    assert sql.rstrip().endswith("AND {range_condition}")
    assert "s.z <= 0.4" in sql


def test_broken_sql_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="broken.sql: not valid T-SQL"):
        transpile_to_duckdb("SELECT FROM WHERE (", tmp_path / "broken.sql")
    with pytest.raises(ValueError, match="unknown sample"):
        load_query("everything")


def _file_digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_duckdb_backend_matches_an_independent_filter_and_never_writes(tiny_sky):
    db = tiny_sky / "sdss_mock.duckdb"
    before = _file_digest(db)
    rows = run_duckdb(load_query("labeled"), db)
    assert _file_digest(db) == before  # attached read-only: the survey file is untouched
    con = duckdb.connect(str(db), read_only=True)
    spec = con.execute("SELECT * FROM SpecObjAll").df()
    photo = con.execute("SELECT * FROM PhotoObjAll").df()
    gal = con.execute("SELECT specObjID, primtarget FROM galSpecInfo").df()
    pz = con.execute("SELECT objID FROM Photoz").df()
    con.close()
    # The paper's conditions, applied with pandas instead of SQL.
    expected = labeled_specobjids(spec, photo, gal, pz["objID"])
    assert len(expected) > 20
    assert sorted(rows["specObjID"]) == expected
    assert rows["objID"].dtype == np.int64
    assert {"z_spec", "z_photo", "e_bv_sfd", "sciencePrimary"} <= set(rows.columns)


def test_unlabeled_query_keeps_primary_clean_galaxies(tiny_sky):
    rows = run_duckdb(load_query("unlabeled"), tiny_sky / "sdss_mock.duckdb")
    assert len(rows) > 20 and rows["objID"].is_unique
    assert (rows["type"] == 3).all() and (rows["mode"] == 1).all()
    assert ((rows["petroMag_r"] - rows["extinction_r"]) <= 17.8).all()


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="survey database not found"):
        run_duckdb(load_query("labeled"), tmp_path / "none.duckdb")


def test_query_output_and_provenance(tiny_sky, tmp_path):
    frame, record = run_query("labeled", DUCKDB_CFG, tiny_sky / "sdss_mock.duckdb")
    out = tmp_path / "catalog" / "labeled.parquet"
    write_query_output(frame, record, out, {"query": DUCKDB_CFG})
    meta = json.loads(out.with_suffix(".provenance.json").read_text())
    assert meta["rows"] == len(frame) == len(pd.read_parquet(out))
    assert meta["sql_sha256"] == hashlib.sha256(meta["sql"].encode()).hexdigest()
    assert meta["backend"] == "duckdb" and meta["data_release"] == 12
    assert meta["provenance"]["version"]
    assert not list(out.parent.glob(".*partial"))


def test_objid_edges_tile_every_objid():
    edges = objid_edges(100)
    assert edges[0] == 0 and edges[-1] == 2**63 - 1
    assert all(a < b for a, b in zip(edges, edges[1:], strict=False))
    real = 1237653651835781245  # run 1904
    k = np.searchsorted(edges, real, side="right") - 1
    assert edges[k] <= real < edges[k + 1]


def test_skyserver_backend_returns_the_same_rows_as_duckdb(tiny_sky):
    """The same SQL through the SkyServer client (split in objID ranges, served on 127.0.0.1 in
    SkyServer's CSV wire format) gives exactly the rows DuckDB gives."""
    reference = run_duckdb(load_query("labeled"), tiny_sky / "sdss_mock.duckdb")
    pattern = re.compile(r"p\.objID >= (\d+) AND p\.objID < (\d+)")

    def answer(request):
        lo, hi = (int(v) for v in pattern.search(request.query["cmd"]).groups())
        part = reference[(reference["objID"] >= lo) & (reference["objID"] < hi)]
        return Reply(200, "#Table1\n" + part.to_csv(index=False, lineterminator="\n"))

    with LoopbackServer() as server:
        from ssl_photoz.surveys.sdss.query.skyserver import SkyServerClient

        path = SkyServerClient(base_url=server.url, trust_env=False).query_url[len(server.url) :]
        server.route("GET", path, answer)
        cfg = {
            "backend": "skyserver",
            "data_release": 12,
            "skyserver_url": server.url,
            "runs_per_range": 2000,
        }
        frame, record = run_query("labeled", cfg)
    assert record["backend"] == "skyserver" and record["ranges"] >= 5
    pd.testing.assert_frame_equal(
        frame.sort_values("specObjID").reset_index(drop=True),
        reference.sort_values("specObjID").reset_index(drop=True),
        check_dtype=False,
    )
    assert frame["objID"].dtype == np.int64


def test_casjobs_without_a_token_fails_before_any_work(monkeypatch):
    monkeypatch.delenv("SCISERVER_TOKEN", raising=False)
    cfg = {
        "backend": "casjobs",
        "data_release": 12,
        "casjobs_url": "http://127.0.0.1:9/never-contacted",
        "casjobs_token_env": "SCISERVER_TOKEN",
    }
    from ssl_photoz.surveys.sdss.query.casjobs import CasJobsAuthError

    # The endpoint (port 9) would refuse a connection: the auth error must come before any call.
    with pytest.raises(CasJobsAuthError, match="(?i)token"):
        run_query("labeled", cfg)


def test_each_query_names_its_mydb_table_and_a_row_key(tmp_path):
    labeled, unlabeled = load_query("labeled"), load_query("unlabeled")
    assert labeled.into_table == "ssl_photoz_labeled" and labeled.row_key == "specObjID"
    assert unlabeled.into_table == "ssl_photoz_unlabeled" and unlabeled.row_key == "objID"
    keyless = tmp_path / "labeled.sql"
    keyless.write_text("SELECT p.objID INTO MyDB.t FROM PhotoObjAll AS p")
    with pytest.raises(ValueError, match="does not select specObjID"):
        _ = load_query("labeled", keyless).row_key


def test_casjobs_machine_settings_are_the_rules_resource_not_their_params():
    """The waiting and clean-up settings reach the query rules as the resource `machine`: the
    params (identity settings) are those of before they existed, and --machine-json takes only
    them."""
    from ssl_photoz.core.config import ConfigError, load_schema, validate_section
    from ssl_photoz.surveys.sdss.query.settings import (
        MACHINE_KEYS,
        identity_settings,
        machine_settings,
        merge_machine_json,
    )

    properties = load_schema()["properties"]["query"]["properties"]
    assert all("default" in properties[k] for k in MACHINE_KEYS)
    section = validate_section("query", {"backend": "casjobs", "data_release": 12})
    slower = {**section, "casjobs_max_wait_s": 86400, "casjobs_keep_mydb_tables": True}
    assert identity_settings(slower) == identity_settings(section)
    assert set(identity_settings(section)) == {
        "backend",
        "data_release",
        "skyserver_url",
        "runs_per_range",
        "casjobs_url",
        "casjobs_token_env",
    } - ({"skyserver_url"} - set(section))
    assert machine_settings(slower)["casjobs_max_wait_s"] == 86400
    merged = merge_machine_json(identity_settings(section), json.dumps(machine_settings(slower)))
    assert validate_section("query", merged) == slower
    with pytest.raises(ConfigError, match="not query machine settings"):
        merge_machine_json(section, json.dumps({"backend": "duckdb"}))
