"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    class_id: int = Field(description="Index into the model's label list.")
    score: float = Field(description="Softmax probability, 0..1.")


class VideoFacts(BaseModel):
    num_frames: int
    fps: float
    duration_s: float
    width: int = Field(description="Displayed width in pixels (after rotation).")
    height: int = Field(description="Displayed height in pixels (after rotation).")
    rotation: int = Field(description="Display rotation applied, degrees counter-clockwise.")
    decoder: str = Field(description="pyav-sparse (8-bit 4:2:0 streams), pyav-intra (MJPEG and other "
                         "intra-only codecs outside MP4/Matroska), decord (other formats) or pyav "
                         "(files decord can't read).")
    sampled_indices: list[int] = Field(description="0-based frame indices the clip was built from.")


class Timings(BaseModel):
    upload: float
    decode: float
    queue: float
    inference: float
    postprocess: float
    total: float


class ClassifyResponse(BaseModel):
    request_id: str
    model: str
    version: int
    predictions: list[Prediction] = Field(description="Top-k classes, highest score first.")
    video: VideoFacts
    timings_ms: Timings
    batch_size: int = Field(description="Clips in the inference batch this video was part of.")


class Problem(BaseModel):
    """RFC 9457 problem details; ``type`` is stable and machine-readable."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    retry_after_s: int | None = Field(None, exclude_if=lambda v: v is None,
                                      description="Seconds to wait before sending it again, as Retry-After says; in "
                                                  "a batch's results the only place a file's wait is given. Absent "
                                                  "where no wait is given.")


class BatchItem(BaseModel):
    filename: str | None
    status: int = Field(description="What this file alone would have got as an HTTP status.")
    result: ClassifyResponse | None = None
    error: Problem | None = None


class BatchResponse(BaseModel):
    request_id: str
    results: list[BatchItem]


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]] = Field(description="Every known version with state and manifest.")


class Liveness(BaseModel):
    status: str


class Health(BaseModel):
    status: str
    models_ready: int = 0
    decoders_ready: int = 0
    detail: str | None = Field(None, description="Why the replica is not ready (absent when it is).")
