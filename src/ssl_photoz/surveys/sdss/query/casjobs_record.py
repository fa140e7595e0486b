"""The job record: what a CasJobs run leaves beside its output so that a rerun can reattach.

A batch job outlives the process that submitted it (a SLURM time limit, a SIGTERM, an outage),
and resubmitting costs hours in the long queue. So as soon as the server has given a job id, the
client writes ``<output>.casjobs.json`` (atomically, `ssl_photoz.core.atomic`): the job id, the
service and context, the MyDB table, the SHA-256 of the submitted SQL, when it was submitted, and
its state, updated as the run goes on (``submitted``, ``finished``, ``downloaded``, ``dropped``,
``failed``, ``cancelled``). A rerun whose SQL has the same digest reattaches to that job: still
running, it keeps polling; finished, it downloads the table the job made. Anything else (another
digest, service or table, a failed or cancelled job, a table no longer there) resubmits, and the
log says why (`reattach_reason`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ssl_photoz.core.atomic import write_json

log = logging.getLogger(__name__)

STATES = ("submitted", "finished", "downloaded", "dropped", "failed", "cancelled")


def sql_sha256(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def record_path_for(output: str | Path) -> Path:
    """Where the job record of an output lives: ``labeled.parquet`` -> ``labeled.casjobs.json``."""
    return Path(output).with_suffix(".casjobs.json")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    base_url: str
    context: str
    mydb_table: str
    sql_sha256: str
    submitted_utc: str
    state: str = "submitted"
    rows: int | None = None
    updated_utc: str = ""

    def moved_to(self, state: str, **fields) -> JobRecord:
        if state not in STATES:
            raise ValueError(f"unknown job record state {state!r}")
        return replace(self, state=state, updated_utc=utc_now(), **fields)


def write_record(path: Path, record: JobRecord) -> None:
    write_json(path, asdict(record))


def read_record(path: Path | None) -> JobRecord | None:
    """The record at ``path``; None when there is none or it cannot be read (said in the log)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
        return JobRecord(**data)
    except (ValueError, TypeError) as exc:
        log.warning("job record %s is unreadable (%s): ignoring it", path, exc)
        return None


def reattach_reason(
    record: JobRecord, *, base_url: str, context: str, table: str, digest: str
) -> str | None:
    """Why the job of ``record`` cannot serve this run (None: it may, ask the server next)."""
    if record.sql_sha256 != digest:
        return (
            f"job record is for SQL sha256 {record.sql_sha256[:12]}..., this run's is "
            f"{digest[:12]}..."
        )
    mine = (base_url, context, table.lower())
    theirs = (record.base_url, record.context, record.mydb_table.lower())
    if mine != theirs:
        return f"job record is for {theirs}, this run is for {mine}"
    if record.state == "dropped":
        return f"MyDB.{record.mydb_table} was dropped after its download"
    if record.state in ("failed", "cancelled"):
        return f"job {record.job_id} ended {record.state}"
    return None
