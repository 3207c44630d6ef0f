"""The reference set: read with a match (or staff) key; add, relabel and delete with a staff key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from raiox_core import references
from raiox_core.api_keys import MATCH, STAFF
from raiox_core.db import Filters
from raiox_core.ingest import LabelOverride, ingest_uploads
from raiox_core.naming import MAX_DIAMETER_MM, MIN_DIAMETER_MM

from ..errors import ApiError, documented
from ..keys import require
from ..uploads import MAX_FILES, files_named, read_form

router = APIRouter(prefix="/v1", tags=["references"])
NEIGHBOURS = 6  # as the dashboard's reference page shows
PRESIGNED_S = 300  # how long an image's presigned S3 URL is valid

_REFERENCE = {"id": 17, "manufacturer": "Nobel Biocare", "model": "REPLACE", "diameter_mm": 4.3,
              "source_filename": "NOBEL_REPLACE_4.3mm_01.png", "sha256": "9f86d081884c7d65...", "source": "upload",
              "created_at": "2026-12-01T19:30:00+00:00"}
_NEIGHBOUR = {"id": 18, "manufacturer": "Nobel Biocare", "model": "REPLACE", "diameter_mm": 4.3, "similarity": 0.97,
              "source_filename": "NOBEL_REPLACE_4.3mm_02.png"}
_INGEST = {"ingested": [{"id": 19, "file": "NOBEL_REPLACE_4.3mm_03.png", "manufacturer": "Nobel Biocare",
                         "model": "REPLACE", "diameter_mm": 4.3}],
           "duplicates": [{"file": "copy.png", "id": 17}],
           "rejected": [{"file": "notes.jpg", "reason": "The file is a text file, not an image."}]}
ReferenceId = Path(ge=1, le=2**63 - 1, description="A reference's id.")


def _ok(example, description: str = "OK") -> dict:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}}


def _resources(request: Request):
    return request.app.state.resources


@router.get("/references", responses={**_ok([_REFERENCE], "The shape of `raiox list --json`; X-Total-Count has "
                                              "the number of references that pass the filters."),
                                      **documented(401, 403, 422, 429, 503)})
def list_references(
    request: Request, response: Response, _=Depends(require(MATCH)),
    manufacturer: str | None = Query(None, max_length=200), model: str | None = Query(None, max_length=200),
    diameter_min: float | None = Query(None, ge=0, le=100), diameter_max: float | None = Query(None, ge=0, le=100),
    q: str | None = Query(None, max_length=200, description="Text in the manufacturer, model or file name."),
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
) -> list[dict]:
    """References that pass every filter given, in label order."""
    db = _resources(request).db
    filters = Filters(manufacturer=manufacturer, model=model, diameter_min=diameter_min, diameter_max=diameter_max,
                      text=q)
    response.headers["X-Total-Count"] = str(db.count(filters))
    return [r.to_json() for r in references.listing(db, filters, limit=limit, offset=offset)]


@router.get("/references/{reference_id}",
            responses={**_ok({**_REFERENCE, "neighbours": [_NEIGHBOUR]}, "The reference, with its nearest "
                             "references by the loaded model (null when it has no vector of that model)."),
                       **documented(401, 403, 404, 422, 429, 503)})
def get_reference(request: Request, reference_id: int = ReferenceId, _=Depends(require(MATCH))) -> dict:
    """One reference and its nearest neighbours."""
    resources = _resources(request)
    found = references.get(resources.db, reference_id)
    near = references.neighbours(resources.db, reference_id, resources.embedder.embedding_model, k=NEIGHBOURS)
    return {**found.to_json(), "neighbours": None if near is None else [n.to_json() for n in near]}


@router.get("/references/{reference_id}/image", response_class=Response,
            responses={200: {"description": "The stored, normalised PNG.", "content": {"image/png": {}}},
                       307: {"description": "On S3 storage: a presigned URL valid for 5 minutes."},
                       **documented(401, 403, 404, 422, 429, 503)})
def reference_image(request: Request, reference_id: int = ReferenceId, _=Depends(require(MATCH))) -> Response:
    """The reference's stored image."""
    resources = _resources(request)
    found = references.get(resources.db, reference_id)
    url = resources.storage.url(found.object_key, expires_s=PRESIGNED_S)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    return Response(resources.storage.get(found.object_key), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})  # content-addressed: it never changes


@router.get("/stats", responses={**_ok({"references": 52, "by_manufacturer": {"Nobel Biocare": 13},
                                        "embedding_models": {"ViT-B-32/laion2b_s34b_b79k": 52},
                                        "models": {"ViT-B-32/laion2b_s34b_b79k": 52}}, "The shape of `raiox stats --json`."),
                                 **documented(401, 403, 429, 503)})
def stats(request: Request, _=Depends(require(MATCH))) -> dict:
    """Counts per manufacturer and vectors per embedding model."""
    return references.stats_json(_resources(request).db)


_INGEST_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": MAX_FILES,
                 "description": "Images named MANUFACTURER_MODEL_DIAMETER_NN.ext, or zip archives of them."},
        "manufacturer": {"type": "string"}, "model": {"type": "string"},
        "group": {"type": "string", "description": "The files show one physical implant: held out together in evaluation."},
        "diameter_mm": {"type": "number", "minimum": MIN_DIAMETER_MM, "maximum": MAX_DIAMETER_MM},
    }}}}}}


def _diameter(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ApiError(422, f"Invalid diameter_mm: a number of millimetres, not {text[:20]!r}.") from None


@router.post("/references", openapi_extra=_INGEST_BODY,
             responses={**_ok(_INGEST, "The shape of `raiox ingest --json`."),
                        **documented(400, 401, 403, 413, 422, 429, 503)})
async def add_references(request: Request, _=Depends(require(STAFF))) -> dict:
    """Ingest images and zip archives; labels from the form override those of the file names."""
    resources = _resources(request)
    embedder = resources.embedder
    form = await read_form(request, resources.limits.max_bytes)
    uploads = files_named(form, "file", {"manufacturer", "model", "diameter_mm", "group"})
    labels = LabelOverride(form.fields.get("manufacturer") or None, form.fields.get("model") or None,
                           _diameter(form.fields.get("diameter_mm")), group_id=form.fields.get("group"))
    report = await run_in_threadpool(lambda: ingest_uploads(
        [(u.filename, bytes(u.data)) for u in uploads], labels, db=resources.db, storage=resources.storage,
        embedder=embedder, limits=resources.limits))
    request.app.state.metrics.observe_ingest(report)
    return report.to_json()


class Labels(BaseModel):
    """New labels; those left out keep their value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"model": "ACTIVE", "diameter_mm": 4.3}})
    manufacturer: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    diameter_mm: float | None = None


@router.patch("/references/{reference_id}", responses={**_ok(_REFERENCE, "The reference with its new labels."),
                                                        **documented(401, 403, 404, 422, 429, 503)})
def relabel(labels: Labels, request: Request, reference_id: int = ReferenceId, _=Depends(require(STAFF))) -> dict:
    """Correct a reference's manufacturer, model or diameter (canonicalised as ingestion does)."""
    db = _resources(request).db
    now = references.get(db, reference_id)
    references.relabel(db, reference_id, labels.manufacturer or now.manufacturer, labels.model or now.model,
                       now.diameter_mm if labels.diameter_mm is None else labels.diameter_mm)
    return references.get(db, reference_id).to_json()


@router.delete("/references/{reference_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Deleted, with its vectors and image."},
                          **documented(401, 403, 404, 422, 429, 503)})
def delete(request: Request, reference_id: int = ReferenceId, _=Depends(require(STAFF))) -> Response:
    """Delete a reference with its vectors and its stored image."""
    resources = _resources(request)
    references.delete_reference(resources.db, resources.storage, reference_id)
    return Response(status_code=204)
