"""The webhook's background work: each claimed submission downloaded and matched on a small thread pool."""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from raiox_core import submissions
from raiox_core.jotform import Submission

from .errors import ApiError

log = logging.getLogger(__name__)
WORKERS = 2  # downloads wait on the network; matching shares the encoder with /v1/match
MAX_WAITING = 100  # submissions accepted and not finished; beyond, 503 (a form tool redelivers later)


class Intake:
    def __init__(self, resources):
        self.resources = resources
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="raiox-webhook")
        self._waiting = threading.BoundedSemaphore(MAX_WAITING)

    def reserve(self) -> None:
        """A place for one more submission, or 503 with Retry-After."""
        if not self._waiting.acquire(blocking=False):
            raise ApiError(503, f"{MAX_WAITING} submissions are waiting to be matched; retry after the Retry-After "
                                "seconds.", {"Retry-After": "30"})

    def release(self) -> None:
        self._waiting.release()

    def start(self, submission: Submission) -> None:
        """Match a reserved, claimed submission in the background."""
        # In the request's context: its log lines carry the webhook request's id.
        self._pool.submit(contextvars.copy_context().run, self._run, submission)

    def _run(self, submission: Submission) -> None:
        resources = self.resources
        try:
            submissions.process(resources.db, submission, fetcher=resources.settings.file_fetcher(),
                                match=resources.matcher(), result_url=resources.settings.result_webhook_url)
        except Exception as exc:  # never a submission left pending by a bug: it fails, and the log has why
            log.error("Matching submission %s failed: %s: %s", submission.submission_id, type(exc).__name__, exc,
                      exc_info=exc)
            try:
                submissions.finish(resources.db, submission.submission_id, submissions.FAILED, [],
                                   "An internal error occurred; the server's log has the details.")
            except Exception:
                log.exception("Could not record the failure of submission %s", submission.submission_id)
        finally:
            self.release()

    def close(self) -> None:
        # Unstarted submissions stay pending and are matched again when redelivered (submissions.STALE_AFTER_S).
        self._pool.shutdown(wait=False, cancel_futures=True)
