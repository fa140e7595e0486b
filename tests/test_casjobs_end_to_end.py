"""Both catalogue queries, as packaged, through the CasJobs backend end to end.

`run_query` drives `CasJobsClient` against `loopback_server.CasJobsEmulator`, which keeps MyDB
between requests and runs the submitted T-SQL with DuckDB on a small synthetic SDSS (built here:
galaxies, stars, repeat spectra, objects failing each cut). The labeled table holds repeat
spectra, so objID repeats there, and it is several pages long (`PAGE_ROWS`). MyDB also holds two
tables of the user's, one of them named ``CasJobs`` (the word a comment of labeled.sql puts
after "into"), which must come through every run untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from labeled_reference import labeled_specobjids
from loopback_server import CasJobsEmulator, LoopbackServer, Reply, redirect

from ssl_photoz.surveys.sdss.query.casjobs import (
    CasJobsClient,
    CasJobsError,
    CasJobsJobError,
    CasJobsOutageError,
    CasJobsRedirectError,
)
from ssl_photoz.surveys.sdss.query.run import run_duckdb, run_query
from ssl_photoz.surveys.sdss.query.sql import load_query

TOKEN = "e2e-T0KEN-1d2c"
PAGE_ROWS = 9
CFG = {"backend": "casjobs", "data_release": 12}
KEEP = {**CFG, "casjobs_keep_mydb_tables": True}
USER_TABLE = pd.DataFrame({"id": [1, 2, 3], "note": ["mine", "keep", "me"]})
USER_TABLES = ("CasJobs", "ssl_photoz_notes")


def synthetic_sdss(seed: int = 5) -> dict[str, pd.DataFrame]:
    """PhotoObjAll, Photoz, SpecObjAll and galSpecInfo with the columns the queries read."""
    rng = np.random.default_rng(seed)
    n = 120
    objid = 1237650000000000000 + rng.permutation(n).astype(np.int64) * 4099 + 7

    def mags(base):
        return np.round(base + rng.normal(0, 0.5, n), 5)

    r = np.round(rng.uniform(14.0, 18.6, n), 5)
    photo = {
        "objID": objid,
        "ra": np.round(rng.uniform(150, 151, n), 7),
        "dec": np.round(rng.uniform(20, 21, n), 7),
        "l": np.round(rng.uniform(0, 360, n), 7),
        "b": np.round(rng.uniform(-90, 90, n), 7),
        "run": np.full(n, 3900, np.int64),
        "rerun": np.full(n, 301, np.int64),
        "camcol": rng.integers(1, 7, n),
        "field": rng.integers(11, 400, n),
        "obj": rng.integers(1, 900, n),
        "type": np.where(rng.random(n) < 0.85, 3, 6),
        "mode": np.where(rng.random(n) < 0.92, 1, 2),
        "clean": np.where(rng.random(n) < 0.93, 1, 0),
        "insideMask": np.where(rng.random(n) < 0.95, 0, 4),
        "flags": rng.integers(0, 2**40, n),
    }
    for band, offset in zip("ugriz", (1.8, 0.7, 0.0, -0.4, -0.7), strict=True):
        photo[f"petroMag_{band}"] = r if band == "r" else mags(r + offset)
    for band in "ugriz":
        photo[f"petroMagErr_{band}"] = np.round(rng.uniform(0.005, 0.3, n), 6)
    for band in "ugriz":
        photo[f"modelMag_{band}"] = mags(photo[f"petroMag_{band}"])
    for band in "ugriz":
        photo[f"extinction_{band}"] = np.round(rng.uniform(0.0, 0.25, n), 6)
    photo["petroR50_r"] = np.round(rng.uniform(0.8, 6.0, n), 5)
    photo = pd.DataFrame(photo)

    with_pz = np.arange(n) % 17 != 0  # a few objects without a photo-z
    photoz = pd.DataFrame(
        {
            "objID": objid[with_pz],
            "z": np.round(rng.uniform(0.0, 0.6, with_pz.sum()), 6),
            "zErr": np.round(rng.uniform(0.005, 0.05, with_pz.sum()), 6),
        }
    )

    # Spectra of the first 70 objects; 25 of them observed twice (repeat spectra).
    first = np.arange(70)
    repeat = rng.choice(first, 25, replace=False)
    owner = np.concatenate([first, repeat])
    m = len(owner)
    spec = pd.DataFrame(
        {
            "specObjID": 2990000000000000000 + rng.permutation(m).astype(np.int64) * 8192,
            "bestObjID": objid[owner],
            "z": np.round(rng.uniform(-0.01, 0.45, m), 6),
            "zErr": np.round(rng.uniform(1e-5, 1e-3, m), 8),
            "zWarning": np.where(rng.random(m) < 0.92, 0, 4),
            "sciencePrimary": np.r_[np.ones(len(first), np.int64), np.zeros(len(repeat), np.int64)],
            "targetType": np.where(rng.random(m) < 0.95, "SCIENCE", "SKY"),
            "survey": np.where(rng.random(m) < 0.93, "sdss", "boss"),
            "class": np.where(rng.random(m) < 0.93, "GALAXY", "QSO"),
        }
    )
    galspec = pd.DataFrame(
        {
            "specObjID": spec["specObjID"],
            "primtarget": np.where(rng.random(m) < 0.92, 64, 0),
            "e_bv_sfd": np.round(rng.uniform(0.0, 0.1, m), 6),
        }
    )
    return {"PhotoObjAll": photo, "Photoz": photoz, "SpecObjAll": spec, "galSpecInfo": galspec}


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    tables = synthetic_sdss()
    path = tmp_path_factory.mktemp("casjobs_sky") / "sdss.duckdb"
    con = duckdb.connect(str(path))
    for name, frame in tables.items():
        con.register("incoming", frame)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
        con.unregister("incoming")
    con.close()
    return path, tables


@pytest.fixture
def casjobs(sky):
    with LoopbackServer() as server:
        tables = {name: USER_TABLE for name in USER_TABLES}
        yield CasJobsEmulator(server, sky_db=sky[0], token=TOKEN, tables=tables)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_client(emulator: CasJobsEmulator, page_rows: int = PAGE_ROWS) -> CasJobsClient:
    clock = FakeClock()
    client = CasJobsClient(
        base_url=emulator.server.url,
        token=TOKEN,
        context="DR12",
        page_rows=page_rows,
        poll_interval_s=5.0,
        retries=1,
        clock=clock,
        sleep=clock.sleep,
    )
    client._session.trust_env = False
    return client


def expected_specobjids(tables) -> list[int]:
    """The labeled query's conditions applied with pandas, not SQL."""
    return labeled_specobjids(
        tables["SpecObjAll"],
        tables["PhotoObjAll"],
        tables["galSpecInfo"],
        tables["Photoz"]["objID"],
    )


def drops(emulator: CasJobsEmulator) -> list[str]:
    return [q for q in emulator.quick_queries() if "DROP" in q.upper()]


def assert_user_tables_untouched(emulator: CasJobsEmulator) -> None:
    for name in USER_TABLES:
        pd.testing.assert_frame_equal(emulator.table(name), USER_TABLE)


@pytest.mark.parametrize("sample", ["labeled", "unlabeled"])
def test_packaged_query_end_to_end_in_pages(casjobs, sky, sample):
    query = load_query(sample)
    table, key = query.into_table, query.row_key
    reference = run_duckdb(query, sky[0]).sort_values(key, ignore_index=True)
    n = len(reference)
    assert n > 2 * PAGE_ROWS  # several pages, the last one partial or not
    if sample == "labeled":
        assert reference["specObjID"].tolist() == expected_specobjids(sky[1])
        assert reference["objID"].duplicated().sum() >= 2  # repeat spectra: objID repeats

    client = make_client(casjobs)
    frame, record = run_query(sample, CFG, client=client)

    pd.testing.assert_frame_equal(frame, reference)
    assert frame[key].is_unique and frame["objID"].dtype == np.int64
    assert record["rows"] == n and record["mydb_table"] == table and record["row_key"] == key
    quick = casjobs.quick_queries()
    pages = [q for q in quick if q.startswith("SELECT TOP")]
    assert len(pages) == math.ceil(n / PAGE_ROWS)
    # Key ranges on the indexed key: the first page from the start, each next one after the
    # last key of the one before.
    assert pages[0].endswith(f"FROM {table} ORDER BY {key}")
    assert all(f"FROM {table} WHERE {key} > " in q for q in pages[1:])
    assert any(f"COUNT_BIG(DISTINCT {key})" in q for q in quick)  # uniqueness asked, not assumed
    assert any(f"SUM({key} % " in q for q in quick)  # and the keys' checksum
    index = f"CREATE UNIQUE CLUSTERED INDEX ix_{table}_{key} ON MyDB.{table} ({key})"
    assert [job["Query"] for job in casjobs.jobs.values()] == [f"{query.text.rstrip()}\n;\n{index}"]
    own = f"IF OBJECT_ID('{table}', 'U') IS NOT NULL DROP TABLE {table}"
    assert drops(casjobs) == [own, own]  # a stale table before the job, its own after download
    assert set(casjobs.mydb_tables()) == set(USER_TABLES)  # dropped once verified
    assert_user_tables_untouched(casjobs)


def test_the_table_is_kept_with_its_index_when_asked(casjobs):
    frame, _ = run_query("labeled", KEEP, client=make_client(casjobs))
    assert set(casjobs.mydb_tables()) == {*USER_TABLES, "ssl_photoz_labeled"}
    assert len(casjobs.table("ssl_photoz_labeled")) == len(frame)
    assert casjobs.indexed_columns("ssl_photoz_labeled") == [("[specObjID]", True)]
    assert len(drops(casjobs)) == 1  # only the stale-table guard before the job


def test_rerun_drops_only_its_own_table(casjobs):
    first, _ = run_query("labeled", KEEP, client=make_client(casjobs))
    second, _ = run_query("labeled", KEEP, client=make_client(casjobs))

    pd.testing.assert_frame_equal(first, second)
    assert [job["Status"] for job in casjobs.jobs.values()] == [5, 5]
    own = "IF OBJECT_ID('ssl_photoz_labeled', 'U') IS NOT NULL DROP TABLE ssl_photoz_labeled"
    assert drops(casjobs) == [own, own]  # no job record: each run drops the table and resubmits
    assert set(casjobs.mydb_tables()) == {*USER_TABLES, "ssl_photoz_labeled"}
    assert_user_tables_untouched(casjobs)


def test_the_emulator_answers_the_old_mistakes_as_casjobs_would(casjobs):
    """What the two bugs did, step by step: the emulator makes each one fail or cost data."""
    query = load_query("labeled")
    client = make_client(casjobs)
    # A SELECT INTO an existing table fails, as SQL Server's "object already exists".
    client.wait(client.submit(query.text))
    with pytest.raises(CasJobsJobError, match="already an object named 'ssl_photoz_labeled'"):
        client.wait(client.submit(query.text))
    # Paging the labeled table by objID is refused: it repeats there.
    with pytest.raises(CasJobsError, match="cannot page MyDB.ssl_photoz_labeled by objID"):
        client.download_table("ssl_photoz_labeled", order_by="objID")
    # Dropping a wrongly read name costs the user's table of that name.
    client.drop_table("CasJobs")
    assert "CasJobs" not in casjobs.mydb_tables()


def test_a_small_table_comes_in_one_answer(casjobs):
    client = make_client(casjobs, page_rows=10_000)
    frame, record = run_query("unlabeled", CFG, client=client)
    downloads = [q for q in casjobs.quick_queries() if q.startswith("SELECT *")]
    assert downloads == ["SELECT *, 1 AS ssl_photoz_end FROM ssl_photoz_unlabeled"]
    assert len(frame) == record["rows"] > 2 * PAGE_ROWS


def test_a_redirect_to_another_origin_mid_run_stops_it_and_keeps_the_token_home(casjobs):
    """The job ran and the first page came; the second page is redirected to another origin
    (http://localhost:<other port>). The run stops with the two URLs; the other server saw no
    request, so no token; nothing was asked again."""
    with LoopbackServer() as elsewhere:
        target = elsewhere.localhost_url + "/collect"
        casjobs.fault = lambda sql, reply: (
            redirect(target, 307) if "WHERE specObjID >" in sql else None
        )
        with pytest.raises(CasJobsRedirectError) as caught:
            run_query("labeled", CFG, client=make_client(casjobs))
        assert elsewhere.requests == []
    assert f"{casjobs.server.url}/contexts/MyDB/query redirected (HTTP 307) to {target}" in str(
        caught.value
    )
    assert TOKEN not in str(caught.value)
    assert len([q for q in casjobs.quick_queries() if "WHERE specObjID >" in q]) == 1


def test_an_http_casjobs_url_is_refused_before_any_traffic(monkeypatch):
    """query.casjobs_url as the config gives it to run_query: http:// to a real host is refused
    while building the client, before a name lookup or a connection."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network traffic attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("SSL_PHOTOZ_TEST_TOKEN", TOKEN)
    url = "http://skyserver.sdss.org/CasJobs/RestApi"
    cfg = {**CFG, "casjobs_url": url, "casjobs_token_env": "SSL_PHOTOZ_TEST_TOKEN"}
    with pytest.raises(ValueError, match="query.casjobs_url must be an https:// URL") as caught:
        run_query("labeled", cfg)
    assert repr(url) in str(caught.value) and TOKEN not in str(caught.value)
    assert attempts == []


# --- long jobs: outages, reattachment, clean-up, footprint, SIGTERM -------------------------


def timed_client(emulator: CasJobsEmulator, **options) -> CasJobsClient:
    """`make_client` with other waiting settings; its fake clock is ``client._clock``."""
    client = make_client(emulator)
    for name, value in options.items():
        setattr(client, name, value)
    return client


def test_an_outage_mid_poll_longer_than_the_old_give_up_is_ridden_out(casjobs, tmp_path, caplog):
    """Polls fail for minutes of (fake) time, far past the ~30 s after which each poll's own
    retries give up; within the outage tolerance the client polls on and gets the table."""
    record = tmp_path / "labeled.casjobs.json"
    casjobs.polls_before_done = 3
    casjobs.outage(polls=24)  # 12 status calls of 2 attempts each
    client = timed_client(casjobs, outage_tolerance_s=900.0)
    caplog.set_level(logging.INFO)
    frame, _ = run_query("labeled", KEEP, client=client, job_record=record)

    assert sorted(frame["specObjID"]) == expected_specobjids(casjobs_tables())
    assert casjobs.submissions == 1
    assert "status answered again after" in caplog.text
    outage_s = float(re.search(r"status answered again after (\d+) s", caplog.text).group(1))
    assert outage_s > 120  # minutes, not the old 30 s
    assert json.loads(record.read_text())["state"] == "downloaded"


def test_an_outage_past_the_tolerance_stops_naming_the_job_and_a_rerun_reattaches(
    casjobs, tmp_path
):
    record = tmp_path / "labeled.casjobs.json"
    casjobs.polls_before_done = 2
    casjobs.outage(polls=10_000, reply=Reply(drop=True))
    client = timed_client(casjobs, outage_tolerance_s=120.0)
    with pytest.raises(CasJobsOutageError) as caught:
        run_query("labeled", KEEP, client=client, job_record=record)
    job_id = next(iter(casjobs.jobs))
    message = str(caught.value)
    assert caught.value.job_id == job_id and f"job {job_id}" in message
    assert "Rerun the query to reattach" in message and str(record) in message
    assert "casjobs_outage_tolerance_s" in message
    assert not [r for r in casjobs.server.requests if r.method == "DELETE"]  # not cancelled
    assert _state(record) == "submitted"

    casjobs.outage(polls=0)  # the service is back
    frame, _ = run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)
    assert casjobs.submissions == 1  # reattached, never resubmitted
    assert len(frame) == len(casjobs.table("ssl_photoz_labeled"))


def test_a_finished_table_is_reused_not_resubmitted(casjobs, tmp_path, caplog):
    record = tmp_path / "labeled.casjobs.json"
    first, _ = run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)
    caplog.set_level(logging.INFO)
    second, _ = run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)

    pd.testing.assert_frame_equal(first, second)
    assert casjobs.submissions == 1
    assert len(drops(casjobs)) == 1  # the first run's stale-table guard only
    assert "finished before this run: downloading its MyDB.ssl_photoz_labeled" in caplog.text


def test_a_changed_query_resubmits_and_says_why(casjobs, tmp_path, caplog):
    record = tmp_path / "labeled.casjobs.json"
    run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)
    changed = tmp_path / "labeled.sql"
    changed.write_text(load_query("labeled").text.replace("s.z <= 0.4", "s.z <= 0.3"))
    caplog.set_level(logging.INFO)
    frame, _ = run_query(
        "labeled", KEEP, sql_path=changed, client=make_client(casjobs), job_record=record
    )

    assert casjobs.submissions == 2
    assert "job record is for SQL sha256" in caplog.text and "submitting a new job" in caplog.text
    assert frame["z_spec"].max() <= 0.3
    digest = json.loads(record.read_text())["sql_sha256"]
    assert digest == hashlib.sha256(casjobs.jobs[max(casjobs.jobs)]["Query"].encode()).hexdigest()


def test_a_failed_job_is_resubmitted(casjobs, tmp_path, caplog):
    record = tmp_path / "labeled.casjobs.json"
    run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)
    first = next(iter(casjobs.jobs))
    casjobs.jobs[first].update(Status=4, Message="the server lost it", Error="")
    caplog.set_level(logging.INFO)
    run_query("labeled", KEEP, client=make_client(casjobs), job_record=record)
    assert casjobs.submissions == 2
    assert f"job {first} is failed on the server (the server lost it)" in caplog.text


def test_the_table_is_dropped_after_a_verified_download_and_a_rerun_resubmits(
    casjobs, tmp_path, caplog
):
    record = tmp_path / "labeled.casjobs.json"
    run_query("labeled", CFG, client=make_client(casjobs), job_record=record)
    assert "ssl_photoz_labeled" not in casjobs.mydb_tables()
    assert json.loads(record.read_text())["state"] == "dropped"
    caplog.set_level(logging.INFO)
    run_query("labeled", CFG, client=make_client(casjobs), job_record=record)
    assert casjobs.submissions == 2
    assert "MyDB.ssl_photoz_labeled was dropped after its download" in caplog.text


def test_a_download_that_fails_its_checksum_keeps_the_table(casjobs, tmp_path):
    """A page whose keys were altered in transit (same count, still unique) fails the checksum,
    so the table is not dropped and the record says finished, not downloaded."""
    record = tmp_path / "labeled.casjobs.json"

    def alter(sql, reply):
        if "WHERE specObjID >" in sql and isinstance(reply.body, str):
            header, first, *rest = reply.body.split("\n")
            at = header.split(",").index("specObjID")
            fields = first.split(",")
            fields[at] = str(int(fields[at]) + 1)
            return Reply(200, "\n".join([header, ",".join(fields), *rest]))
        return None

    casjobs.fault = alter
    with pytest.raises(CasJobsError, match="checksum"):
        run_query("labeled", CFG, client=make_client(casjobs), job_record=record)
    assert "ssl_photoz_labeled" in casjobs.mydb_tables()
    assert json.loads(record.read_text())["state"] == "finished"


def test_the_mydb_footprint_is_logged_before_submitting(casjobs, sky, caplog):
    caplog.set_level(logging.INFO)
    run_query("labeled", CFG, client=make_client(casjobs))
    reference = run_duckdb(load_query("labeled"), sky[0])
    width = int(sum(dtype.itemsize for dtype in reference.dtypes))  # DuckDB's types, as NumPy's
    line = next(r.getMessage() for r in caplog.records if "of MyDB (" in r.getMessage())
    assert f"({width} bytes per row of data alone, 502,977 rows expected" in line
    assert f"about {width * 502_977 / 1e9:.2f} GB" in line
    logged = [r.getMessage() for r in caplog.records]
    footprint_at = next(i for i, m in enumerate(logged) if "of MyDB (" in m)
    submitted_at = next(i for i, m in enumerate(logged) if "submitted to DR12" in m)
    assert footprint_at < submitted_at


def casjobs_tables():
    return synthetic_sdss()


def _cli(emulator: CasJobsEmulator, out, poll_s: float = 0.05):
    section = {**CFG, "casjobs_url": emulator.server.url, "casjobs_token_env": "E2E_TOKEN"}
    machine = {
        "casjobs_max_wait_s": 600,
        "casjobs_poll_interval_s": poll_s,
        "casjobs_max_poll_interval_s": poll_s,
        "casjobs_outage_tolerance_s": 60,
        "casjobs_keep_mydb_tables": False,
    }
    command = [sys.executable, "-m", "ssl_photoz.cli", "query-labeled"]
    command += ["--section-json", json.dumps(section), "--machine-json", json.dumps(machine)]
    env = {**os.environ, "E2E_TOKEN": TOKEN, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "*"}
    return subprocess.Popen(
        [*command, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(process, condition, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the CLI ended before {what}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _state(record) -> str | None:
    try:
        return json.loads(record.read_text())["state"]
    except (OSError, ValueError):
        return None


def _terminate(process) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    return output


def test_sigterm_between_submit_and_download_then_a_rerun_reattaches(casjobs, tmp_path):
    """The CLI is killed (SIGTERM, as SLURM does) while its job runs, then again mid-download:
    each time the job record stays, no .partial file is left, and the last run downloads the
    table of the one job ever submitted."""
    out = tmp_path / "catalog" / "labeled.parquet"
    record = out.with_suffix(".casjobs.json")
    casjobs.polls_before_done = 10**9  # the job runs until the test says otherwise

    running = _cli(casjobs, out)
    _wait_for(running, lambda: _state(record) == "submitted", "the job record")
    _terminate(running)
    assert _state(record) == "submitted" and not out.exists()
    assert not list(out.parent.glob(".*partial"))

    casjobs.polls_before_done = 0  # the job finishes; the download (one answer) is slow
    downloads = []

    def slow(sql, reply):
        if sql.startswith("SELECT *"):
            downloads.append(sql)
            return Reply(reply.status, reply.body, delay_s=5.0)
        return None

    casjobs.fault = slow
    downloading = _cli(casjobs, out)
    _wait_for(downloading, lambda: len(downloads) >= 1, "the download")
    output = _terminate(downloading)
    assert "reattaching to CasJobs job" in output or "finished before this run" in output
    assert _state(record) == "finished" and not out.exists()
    assert not list(out.parent.glob(".*partial"))

    casjobs.fault = None
    last = _cli(casjobs, out)
    output, _ = last.communicate(timeout=120)
    assert last.returncode == 0, output
    assert casjobs.submissions == 1
    frame = pd.read_parquet(out)
    assert sorted(frame["specObjID"]) == expected_specobjids(casjobs_tables())
    assert _state(record) == "dropped" and "ssl_photoz_labeled" not in casjobs.mydb_tables()
    assert not list(out.parent.glob(".*partial"))


def test_sigterm_while_an_output_is_written_removes_its_partial_file(tmp_path):
    """Inside the CLI's guard a SIGTERM becomes SystemExit, so the atomic writer's finally
    removes the half-written file (without the guard the signal would kill pytest itself)."""
    from ssl_photoz.cli.common import sigterm_as_exit
    from ssl_photoz.core.atomic import atomic_path

    target = tmp_path / "labeled.parquet"
    with pytest.raises(SystemExit) as caught, sigterm_as_exit(), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a table")
        assert tmp.exists()
        signal.raise_signal(signal.SIGTERM)
    assert caught.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the guard is undone
