"""The clinic-form webhook (Jotform) and the submissions it leaves: POST /v1/webhooks/jotform/{key},
GET /v1/submissions/{submission_id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from raiox_core import submissions
from raiox_core.api_keys import MATCH, WEBHOOK
from raiox_core.jotform import parse_submission

from ..errors import documented
from ..keys import authorise, require
from ..uploads import read_form

router = APIRouter(prefix="/v1", tags=["webhooks"])

# Jotform's own fields (formID, submissionID, formTitle, pretty, rawRequest, ip, username, type, ...) and
# room for a long form's answers in rawRequest and pretty.
WEBHOOK_FIELDS, WEBHOOK_FIELD_BYTES = 40, 512 * 1024

_ACCEPTED = {"submission_id": "5862346891234567890", "status": "pending",
             "status_url": "/v1/submissions/5862346891234567890"}
_DONE = {"submission_id": "5862346891234567890", "form_id": "231234567890123", "source": "jotform", "status": "done",
         "results": [{"file": "q5_xray", "answer": "Nobel Biocare REPLACE", "confident": True, "confidence": 0.8123,
                      "matches": [{"id": 17, "manufacturer": "Nobel Biocare", "model": "REPLACE", "diameter_mm": 4.3,
                                   "similarity": 0.9412, "source_filename": "NOBEL_REPLACE_4.3mm_01.png"}]}],
         "error": None, "received_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:00:02+00:00"}
JOTFORM_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["formID", "submissionID", "rawRequest"],
    "properties": {
        "formID": {"type": "string"}, "submissionID": {"type": "string"}, "formTitle": {"type": "string"},
        "pretty": {"type": "string", "description": "Ignored (it holds the form's other answers)."},
        "rawRequest": {"type": "string", "description": "JSON of the answers keyed q<N>_<name>; a file-upload "
                       "answer is a list of URLs, the only answers read."},
    }}}}}}


@router.post("/webhooks/jotform/{key}", status_code=202, openapi_extra=JOTFORM_FORM,
             responses={202: {"description": "Accepted: matched in the background (a redelivery answers its "
                                             "submission's current status and is not matched again).",
                              "content": {"application/json": {"example": _ACCEPTED}}},
                        **documented(400, 401, 403, 413, 422, 429, 503,
                                     e401="Send a valid API key in the webhook's URL (`raiox keys create NAME --scope webhook`).",
                                     e403="This key's scope is match; this endpoint needs webhook.",
                                     e422="The webhook's submissionID is missing or not an id of letters and digits.")})
async def jotform(request: Request, key: str = Path(description="A webhook-scope key: the URL's secret.")) -> JSONResponse:
    """Jotform's webhook: the submission's uploaded X-rays are downloaded from Jotform and matched; the
    result is at status_url (and is posted to RAIOX_RESULT_WEBHOOK_URL when set)."""
    resources = request.app.state.resources
    authorise(request, key, WEBHOOK, sent_in="the webhook's URL (`raiox keys create NAME --scope webhook`)")
    _ = resources.embedder  # 503 while the model loads: nothing is claimed that could not be matched
    form = await read_form(request, resources.limits.max_bytes, max_fields=WEBHOOK_FIELDS,
                           max_field_bytes=WEBHOOK_FIELD_BYTES)
    submission = parse_submission(form.fields)
    intake = request.app.state.intake
    intake.reserve()
    try:
        claimed = await run_in_threadpool(submissions.claim, resources.db, submission)
    except BaseException:
        intake.release()
        raise
    if claimed:
        intake.start(submission)
        status = submissions.PENDING
    else:
        intake.release()
        status = (await run_in_threadpool(submissions.get, resources.db, submission.submission_id)).status
    return JSONResponse({"submission_id": submission.submission_id, "status": status,
                         "status_url": f"/v1/submissions/{submission.submission_id}"}, status_code=202)


@router.get("/submissions/{submission_id}",
            responses={200: {"description": "pending, done (with the same results as POST /v1/match) or failed "
                                            "(with the reason).", "content": {"application/json": {"example": _DONE}}},
                       **documented(401, 403, 404, 422, 429, 503, e404="There is no submission '5862346891234567890'.")})
def submission(request: Request, submission_id: str, _=Depends(require(MATCH))) -> dict:
    """A form submission's status and results."""
    return submissions.get(request.app.state.resources.db, submission_id).to_json()
