"""A Jotform webhook's submission, reduced to what matching needs: the form's and submission's ids and the
uploaded files' URLs.

Jotform posts multipart/form-data with formID, submissionID, formTitle, pretty (the answers as one line of
text) and rawRequest (a JSON string of the answers keyed q<N>_<name>), among others. A file-upload question's
answer is a list of https URLs on Jotform's servers. Everything else a form asks (names, e-mail, patient,
tooth) is dropped here and never reaches a log or the database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import InvalidInput

SOURCE = "jotform"
MAX_FILES = 20  # uploads matched per submission, as per request on POST /v1/match
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_QUESTION = re.compile(r"q\d+_[\w-]{1,64}")
_URL = re.compile(r"https?://\S{1,2000}", re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    # What the results call the file: its question (q5_xray, a name of the form's design) and position, never
    # its file name, which may hold a patient's name.
    name: str
    url: str


@dataclass(frozen=True)
class Submission:
    form_id: str
    submission_id: str
    uploads: tuple[Upload, ...]
    source: str = SOURCE


def _id(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not _ID.fullmatch(value):
        raise InvalidInput(f"The webhook's {name} is missing or not an id of letters and digits.")
    return value


def parse_submission(fields: dict[str, str]) -> Submission:
    """The submission in a webhook's form fields; InvalidInput when it is not one Jotform would send."""
    form_id, submission_id = _id(fields, "formID"), _id(fields, "submissionID")
    try:
        answers = json.loads(fields.get("rawRequest") or "")
    except ValueError:
        raise InvalidInput("The webhook's rawRequest is missing or not JSON.") from None
    if not isinstance(answers, dict):
        raise InvalidInput("The webhook's rawRequest is not a JSON object of answers.")
    uploads = []
    for question, answer in answers.items():
        if not (_QUESTION.fullmatch(question) and isinstance(answer, list)):
            continue
        for index, url in enumerate(answer, start=1):
            if isinstance(url, str) and _URL.fullmatch(url.strip()):
                uploads.append(Upload(question if len(answer) == 1 else f"{question}[{index}]", url.strip()))
    if len(uploads) > MAX_FILES:
        raise InvalidInput(f"The submission has {len(uploads)} uploaded files; at most {MAX_FILES} are matched.")
    return Submission(form_id, submission_id, tuple(uploads))
