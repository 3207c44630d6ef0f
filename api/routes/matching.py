"""POST /v1/match: the list `raiox match --json` prints, from the same core function."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from raiox_core.api_keys import MATCH
from raiox_core.db import Filters
from raiox_core.match import MAX_K, Refusal, resolve_manufacturer

from ..errors import ApiError, documented
from ..keys import require
from ..uploads import MAX_FILES, Form, files_named, read_form

router = APIRouter(prefix="/v1", tags=["match"])

_MATCH_EXAMPLE = [{
    "file": "scan.png", "embedding_model": "ViT-B-32/laion2b_s34b_b79k", "model_id": "ViT-B-32/laion2b_s34b_b79k",
    "answer": "Nobel Biocare REPLACE", "confident": True, "confidence": 0.8123, "confidence_of": "manufacturer",
    "threshold": 0.6, "restricted_to": None, "exact_reference": None,
    "matches": [{"id": 17, "manufacturer": "Nobel Biocare", "model": "REPLACE", "diameter_mm": 4.3,
                 "similarity": 0.9412, "source_filename": "NOBEL_REPLACE_4.3mm_01.png"}],
    "vote": {"manufacturer": [{"label": "Nobel Biocare", "probability": 0.8123}],
             "model": [{"label": "Nobel Biocare REPLACE", "probability": 0.7011}]},
}, {"file": "notes.jpg", "error": "The file is a text file, not an image."}]

MULTIPART_IMAGES = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": MAX_FILES,
                  "description": f"One or more X-rays (PNG, JPEG, TIFF, BMP, DICOM), at most {MAX_FILES}."},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 3, "description": "References to answer."},
        "manufacturer": {"type": "string", "description": "Search only this manufacturer's references."},
    }}}}}}


def _k(form: Form) -> int:
    text = form.fields.get("k", "3").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise ApiError(422, f"Invalid k: a whole number from 1 to {MAX_K}, not {text[:20]!r}.")
    return int(text)


@router.post("/match", openapi_extra=MULTIPART_IMAGES,
             responses={200: {"description": "One entry per image, in order; a refused image has `error`.",
                              "content": {"application/json": {"example": _MATCH_EXAMPLE}}},
                        **documented(400, 401, 403, 404, 413, 415, 422, 429, 503,
                                     e404="No reference has the manufacturer 'acme'; the manufacturers are: Nobel Biocare, Straumann.")})
async def match(request: Request, _=Depends(require(MATCH))) -> list[dict]:
    """Nearest references, vote and confidence for each image; 200 when at least one image was read."""
    resources = request.app.state.resources
    _ = resources.match_encoder  # 503 before the body is read, while the model loads
    form = await read_form(request, resources.limits.max_bytes)
    images = files_named(form, "image", {"k", "manufacturer"})
    k = _k(form)

    def run() -> list:
        filters = Filters(manufacturer=resolve_manufacturer(resources.db, form.fields.get("manufacturer")))
        return resources.matcher(k, filters)([(u.filename, lambda u=u: bytes(u.data)) for u in images])

    # Bounded after the body is read (each body is bounded by the upload limits): the requests waiting here hold
    # theirs in memory, so beyond RAIOX_MATCH_QUEUE of them a client hears 503 rather than joining the wait.
    with resources.match_admission.enter():
        answers = await run_in_threadpool(run)
    for answer in answers:
        if not isinstance(answer, Refusal):
            request.app.state.metrics.observe_match(answer)
    if all(isinstance(a, Refusal) for a in answers):
        first = answers[0]
        some = f"None of the {len(answers)} files is an image we accept; " if len(answers) > 1 else ""
        raise ApiError(415, f"{some}{first.file[:120]}: {first.error}")
    return [a.to_json() for a in answers]
