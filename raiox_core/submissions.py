"""Web-form submissions: claimed once per submission id, their uploads downloaded and matched, the result
kept (and optionally posted on), all without keeping anything of the form but its ids.

The HTTP API's webhook claims a submission and runs `process` in the background; `GET /v1/submissions/{id}`
and the dashboard's /match page read what it stored.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from psycopg.types.json import Jsonb

from .db import Database
from .errors import NotFound, RaioxError
from .jotform import Submission
from .match import MatchResult, Refusal
from .redact import redact_url
from .remote_files import Fetcher

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
# A submission still pending after this long was left by a process that stopped: it is shown as failed, and
# a redelivery of it is matched again.
STALE_AFTER_S = 15 * 60
RESULT_RETRIES = 3  # after the first attempt, with backoff doubling from RESULT_BACKOFF_S
RESULT_BACKOFF_S = 1.0
RESULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SubmissionRecord:
    submission_id: str
    source: str
    form_id: str
    status: str
    results: list | None
    error: str | None
    received_at: datetime
    finished_at: datetime | None
    delivered_at: datetime | None
    delivery_error: str | None

    @classmethod
    def from_row(cls, row: dict) -> SubmissionRecord:
        fields = {f: row[f] for f in cls.__dataclass_fields__}
        if row["stale"]:
            fields.update(status=FAILED, error=f"The submission was not matched within {STALE_AFTER_S // 60} minutes "
                                              "(the server may have restarted); send it again.")
        return cls(**fields)

    def to_json(self) -> dict:
        """The shape of GET /v1/submissions/{id} and of the result posted to RAIOX_RESULT_WEBHOOK_URL."""
        return {"submission_id": self.submission_id, "form_id": self.form_id, "source": self.source,
                "status": self.status, "results": self.results or [], "error": self.error,
                "received_at": self.received_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


def claim(db: Database, submission: Submission) -> bool:
    """True when this delivery is the one to match it: a new submission, or one a stopped process left pending."""
    return bool(db.query("claim-submission", {"submission_id": submission.submission_id, "source": submission.source,
                                              "form_id": submission.form_id, "stale_s": STALE_AFTER_S}))


def get(db: Database, submission_id: str) -> SubmissionRecord:
    rows = db.query("get-submission", {"submission_id": submission_id, "stale_s": STALE_AFTER_S})
    if not rows:
        raise NotFound(f"There is no submission {submission_id[:64]!r}.")
    return SubmissionRecord.from_row(rows[0])


def latest(db: Database, limit: int = 20) -> list[SubmissionRecord]:
    """The most recent submissions first (for the dashboard)."""
    return [SubmissionRecord.from_row(r) for r in db.query("latest-submissions", {"limit": limit, "stale_s": STALE_AFTER_S})]


def finish(db: Database, submission_id: str, status: str, results: list, error: str | None) -> None:
    db.query("finish-submission", {"submission_id": submission_id, "status": status, "results": Jsonb(results),
                                   "error": error})


Matcher = Callable[[list[tuple[str, Callable[[], bytes]]]], list[MatchResult | Refusal]]


def process(db: Database, submission: Submission, *, fetcher: Fetcher, match: Matcher,
            result_url: str | None = None) -> SubmissionRecord:
    """Download each upload, match them as POST /v1/match would, store the outcome and post it on.

    `match` is match.match_files with the door's database, model and limits bound. The submission is `done`
    when at least one upload was matched (a refused one has its `error`, as on /v1/match), else `failed`
    with the reason of the first.
    """
    answers: list[MatchResult | Refusal] = []
    try:
        answers = match([(upload.name, lambda upload=upload: fetcher.fetch(upload.url).data)
                         for upload in submission.uploads]) if submission.uploads else []
        matched = [a for a in answers if isinstance(a, MatchResult)]
        if matched:
            status, error = DONE, None
        elif answers:
            status, error = FAILED, f"{answers[0].file}: {answers[0].error}"
        else:
            status, error = FAILED, "The submission has no uploaded file to match."
        results = [a.to_json() for a in answers]
    except RaioxError as exc:  # the database or the model failed under it: the submission says so
        status, error, results = FAILED, str(exc), []
    finish(db, submission.submission_id, status, results, error)
    # The form's and the submission's ids only: nothing the form asked.
    log.info("%s submission %s of form %s: %s (%d of %d files matched)", submission.source, submission.submission_id,
             submission.form_id, status, sum(isinstance(a, MatchResult) for a in answers), len(submission.uploads))
    record = get(db, submission.submission_id)
    if result_url:
        error = post_result(result_url, record.to_json())
        db.query("record-submission-delivery", {"submission_id": submission.submission_id, "error": error})
    return record


def post_result(url: str, body: dict, *, retries: int = RESULT_RETRIES, backoff_s: float = RESULT_BACKOFF_S,
                sleep: Callable[[float], None] = time.sleep) -> str | None:
    """POST `body` as JSON, retried with doubling backoff; None once delivered, else why it was not."""
    data = json.dumps(body).encode()
    reason = "not attempted"
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "Raiox"})
        try:
            with urllib.request.urlopen(request, timeout=RESULT_TIMEOUT_S) as response:
                if 200 <= response.status < 300:
                    return None
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            reason = type(exc).__name__
    message = f"The result could not be delivered to {redact_url(url)} after {retries + 1} attempts ({reason})."
    log.warning("%s", message)
    return message
