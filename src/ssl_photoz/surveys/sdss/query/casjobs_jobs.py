"""CasJobs batch jobs as the server reports them: their states, the errors of a job, its message.

Shared by the client's job flow (``casjobs``) and the decision to reattach to a recorded job
(``casjobs_reattach``).
"""

from __future__ import annotations

from enum import IntEnum

from ssl_photoz.surveys.sdss.query.casjobs_http import CasJobsError
from ssl_photoz.surveys.sdss.query.http_errors import QueryError


class JobStatus(IntEnum):
    """CasJobs job states (the ``Status`` field of a job)."""

    READY = 0
    STARTED = 1
    CANCELING = 2
    CANCELLED = 3
    FAILED = 4
    FINISHED = 5


TERMINAL_STATES = {JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.FINISHED}


class CasJobsJobError(QueryError):
    """The batch job ended failed or cancelled; carries the server's message."""

    def __init__(self, job_id: int, status: JobStatus, message: str, sql: str = ""):
        super().__init__(f"job {job_id} {status.name.lower()}: {message}", sql)
        self.job_id = job_id
        self.job_status = status


class CasJobsTimeoutError(CasJobsError):
    """The job did not finish within the client's timeout (it was asked to cancel)."""


class CasJobsOutageError(CasJobsError):
    """Status polls failed for longer than the outage tolerance; the job was left running."""

    def __init__(self, message: str, job_id: int):
        super().__init__(message)
        self.job_id = job_id


def job_state(job_id: int, job: dict) -> JobStatus:
    """The state of a job's status JSON; CasJobsError for a state this client does not know."""
    try:
        return JobStatus(int(job["Status"]))
    except ValueError:
        raise CasJobsError(f"job {job_id}: unknown Status {job['Status']!r}") from None


def job_message(job: dict) -> str:
    """The server's words on a job (its Error and Message fields, once each)."""
    parts = []
    for key in ("Error", "Message"):
        text = str(job.get(key) or "").strip()
        if text and text not in parts:
            parts.append(text)
    return "; ".join(parts) or "the server gave no message"


def comparable(sql: str) -> str:
    """SQL with its whitespace collapsed: the server may store the job's text re-wrapped."""
    return " ".join(str(sql).split())
