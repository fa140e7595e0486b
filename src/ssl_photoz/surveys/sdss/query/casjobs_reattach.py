"""Whether a rerun may reattach to the CasJobs job its record names, rather than submit again.

A job record (``casjobs_record``) of the same SQL, service and table reattaches when the server
still knows the job and ran that SQL: a running job is polled on, a finished one's MyDB table is
downloaded. Anything else submits anew, and the log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ssl_photoz.surveys.sdss.query.casjobs_http import (
    CasJobsAuthError,
    CasJobsError,
    CasJobsRedirectError,
)
from ssl_photoz.surveys.sdss.query.casjobs_jobs import JobStatus, comparable, job_message, job_state
from ssl_photoz.surveys.sdss.query.casjobs_record import JobRecord, reattach_reason, sql_sha256
from ssl_photoz.surveys.sdss.query.http_errors import RetriesExhaustedError

log = logging.getLogger("ssl_photoz.surveys.sdss.query.casjobs")  # the job flow's log


def reattach(
    client, record: JobRecord | None, path: Path | None, name: str, job_sql: str
) -> JobRecord | None:
    """The recorded job if this run may reattach to it, else None (the log says why)."""
    if record is None:
        if path is not None:
            log.info("no CasJobs job record at %s: submitting a new job", path)
        return None
    why = reattach_reason(
        record,
        base_url=client.base_url,
        context=client.context,
        table=name,
        digest=sql_sha256(job_sql),
    )
    if why is None:
        why = server_refuses(client, record, name, job_sql)
    if why is not None:
        log.info("not reattaching to CasJobs job %d: %s; submitting a new job", record.job_id, why)
        return None
    return record


def server_refuses(client, record: JobRecord, name: str, job_sql: str) -> str | None:
    """Why the server's view of the recorded job rules out reattaching (None: reattach)."""
    job_id = record.job_id
    try:
        job = client.status(job_id)
    except RetriesExhaustedError as exc:  # an outage: the polls ride it out, or give up
        log.warning("CasJobs job %d: cannot ask its state now (%s); reattaching", job_id, exc)
        return None
    except (CasJobsAuthError, CasJobsRedirectError):
        raise
    except CasJobsError as exc:
        return f"the server does not know job {job_id} ({exc})"
    ran = job.get("Query")
    if ran and comparable(ran) != comparable(job_sql):
        return f"the server's job {job_id} ran other SQL"
    state = job_state(job_id, job)
    if state in (JobStatus.READY, JobStatus.STARTED):
        log.info(
            "reattaching to CasJobs job %d (%s, submitted %s): polling on",
            job_id,
            state.name.lower(),
            record.submitted_utc,
        )
        return None
    if state == JobStatus.FINISHED:
        if name.lower() not in {t.lower() for t in client.mydb_tables()}:
            return f"job {job_id} finished but MyDB.{name} is no longer there"
        log.info(
            "CasJobs job %d finished before this run: downloading its MyDB.%s, no resubmission",
            job_id,
            name,
        )
        return None
    return f"job {job_id} is {state.name.lower()} on the server ({job_message(job)})"
