"""Service settings: one pydantic-settings class, read from ``TSM_*`` environment variables.

Every field has a ``description`` (the README table is generated from them) and unsafe or
contradictory values are refused at start, not discovered under traffic.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.contract.manifest import is_valid_name

Device = Literal["auto", "cpu", "gpu"]
_ORIGIN = re.compile(r"https?://[^\s/?#@]+", re.IGNORECASE)
Precision = Literal["fp32", "fp16", "int8"]


class ServiceSettings(BaseSettings):
    """Everything the inference service can be told; env vars are ``TSM_<FIELD>`` (upper case)."""

    # An empty variable is unset: `TSM_UPLOAD_DIR=` in a compose file or `-e TSM_API_KEY=` means "no value", not
    # the current folder or a refused key.
    model_config = SettingsConfigDict(env_prefix="TSM_", extra="ignore", env_ignore_empty=True,
                                      protected_namespaces=())

    host: str = Field("127.0.0.1", description="Address uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on (0 picks a free one).")
    model_repo: Path = Field(Path("model_repo"), description="Model repository root: <repo>/<name>/<version>/.")
    default_model: str | None = Field(
        None, description="Model used when a request names none; optional while the repository holds one model "
                          "(with several and none set, such requests get 400, on every replica alike).")
    model_versions: dict[str, int] = Field(
        default_factory=dict,
        description='Pinned versions as JSON, e.g. {"tiny": 3}; unpinned models serve their highest valid version.')
    poll_interval_s: float = Field(
        5.0, ge=0, le=3600, description="Seconds between model repository scans for new versions (0 disables).")
    max_upload_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, le=16 * 1024**3,
        description="Largest accepted video upload in bytes (413 above it).")
    allowed_content_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["video/*", "image/gif", "application/octet-stream"],
        description="Content types accepted for a raw-body upload or a multipart file part ('type/*' wildcards), "
                    "comma-separated or as a JSON list. image/gif: browsers send animated GIFs so.")
    max_batch_files: int = Field(16, ge=1, le=256, description="Most files accepted by one /classify/batch request.")
    decode_workers: int = Field(2, ge=1, le=64, description="Decoder worker processes (decode + sample + preprocess).")
    decode_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A decode slower than this kills its worker; the request gets 422. "
        "Below request_deadline_ms (else the deadline's 504 comes first).")
    decode_memory_mb: int = Field(
        4096, ge=256, le=65536,
        description="Address-space limit of a decoder worker in MiB (a blow-up loses only the worker).")
    decode_queue_capacity: int = Field(
        32, ge=1, le=10_000, description="Videos waiting for a free decoder worker; above it requests get 503.")
    max_video_duration_s: float = Field(
        600.0, gt=0, le=86_400, description="Longest accepted video in seconds (422 above it).")
    max_video_pixels: int = Field(
        3840 * 2160, ge=64, le=7680 * 4320,
        description="Largest accepted frame size, width x height in pixels (422 above it).")
    max_batch_size: int = Field(
        1, ge=1, le=256, description="Most clips in one inference batch. 1 suits a CPU (batching costs memory and "
        "buys no throughput there: see the benchmarks); 8-32 a GPU.")
    max_queue_delay_ms: float = Field(
        10.0, ge=0, le=10_000, description="Longest a clip waits for its batch to fill before inference starts.")
    queue_capacity: int = Field(64, ge=1, description="Clips waiting per model version; above it requests get 503.")
    request_deadline_ms: float = Field(
        30_000.0, gt=0, description="Time budget of one request from arrival; past it the request gets 504.")
    backend: Literal["auto", "paddle", "onnxruntime"] = Field(
        "auto", description="auto: Paddle Inference on the GPU (TensorRT if enabled); on the CPU the faster of "
        "Paddle+oneDNN and ONNX Runtime, timed at load. paddle / onnxruntime force one.")
    device: Device = Field("auto", description="auto (GPU when present, else CPU), cpu or gpu (a version fails to "
                           "load where no GPU is usable).")
    precision: Precision = Field("fp32", description="fp32, fp16 (GPU) or int8 (TensorRT with a quantised model).")
    tensorrt: bool = Field(False, description="Use TensorRT subgraphs on the GPU (engines cached beside the version).")
    gpu_id: int = Field(0, ge=0, description="CUDA device index.")
    gpu_memory_mb: int = Field(1024, ge=64, description="Initial GPU memory pool of Paddle Inference in MiB.")
    trt_workspace_bytes: int = Field(1 << 30, ge=1 << 20, description="TensorRT builder workspace in bytes.")
    trt_min_subgraph_size: int = Field(3, ge=1, description="Smallest op subgraph handed to TensorRT.")
    trt_cache_dir: Path | None = Field(
        None,
        description="TensorRT engine cache root (<root>/<name>/<version>/); default <repo>/<name>/.cache/<version>/.")
    cpu_threads: int = Field(2, ge=1, le=256, description="CPU math library threads per predictor.")
    onednn: bool = Field(True, description="Use oneDNN (MKL-DNN) kernels on the CPU.")
    warmup_runs: int = Field(2, ge=1, le=100, description="Warm-up inferences before a version is marked ready.")
    upload_timeout_s: float = Field(
        15.0, gt=0, le=3600,
        description="Longest an upload may take to arrive (a trickling client gets 408 and its partial file is "
                    "removed). Below request_deadline_ms, which bounds the upload too.")
    upload_dir: Path | None = Field(
        None, description="Folder for uploads while they are processed (default: the system temp folder); it must "
                          "exist and be writable.")
    api_key: SecretStr | None = Field(
        None, description="When set (8 characters at least), /classify and /models need it in X-API-Key or "
        "'Authorization: Bearer'.")
    protect_operations: bool = Field(
        False, description="With api_key set: /healthz, /readyz and /metrics need the key too (else they are open).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins whose pages may call the API from a browser (CORS), comma-separated or as a JSON "
                    "list, e.g. https://app.example.com; * allows any. Empty: no CORS headers (browsers refuse "
                    "cross-origin calls; other clients are not affected).")
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM: seconds in-flight requests get to finish before exit.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Root log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object a line on stderr, with request_id (what Paddle's C++ code "
                            "prints to stdout becomes records of the `paddle` logger); text: one plain line a "
                            "record, for a terminal.")

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_name(value):
            raise ValueError(f"invalid model name {value!r}")
        return value

    @field_validator("model_versions")
    @classmethod
    def _pins(cls, value: dict[str, int]) -> dict[str, int]:
        for name, version in value.items():
            if not is_valid_name(name) or version < 1:
                raise ValueError(f"invalid pin {name!r}: {version!r}")
        return value

    @field_validator("allowed_content_types", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """``video/mp4,video/webm`` as well as ``["video/mp4"]``: a single entry is the natural way to write one."""
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # A browser's Origin header is scheme://host[:port] with no path: anything else would never match.
        cleaned = [v.strip().rstrip("/") for v in value if v.strip()]
        wrong = [v for v in cleaned if v != "*" and not _ORIGIN.fullmatch(v)]
        if wrong:
            raise ValueError(f"not a web origin: {', '.join(map(repr, wrong))} (write scheme://host[:port], "
                             "e.g. https://app.example.com, or *)")
        return cleaned

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value  # TSM_LOG_LEVEL=debug as well as DEBUG

    @field_validator("upload_dir")
    @classmethod
    def _writable_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_dir() and os.access(value, os.W_OK | os.X_OK)):
            raise ValueError(f"{value} is not a writable folder (create it, or leave TSM_UPLOAD_DIR unset)")
        return value

    @field_validator("allowed_content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().lower() for v in value if v.strip()]
        if not cleaned or any("/" not in v for v in cleaned):
            raise ValueError("allowed_content_types needs entries like 'video/*' or 'application/octet-stream'")
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        if self.precision == "int8" and not self.tensorrt:
            raise ValueError("precision=int8 needs tensorrt=true (TensorRT runs a quantised model)")
        if self.device == "cpu" and self.tensorrt:
            raise ValueError("tensorrt=true needs a GPU; set device=auto or device=gpu")
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 8:
            raise ValueError("api_key must be at least 8 characters")
        self._timeouts_within_deadline()
        return self

    def advice(self) -> list[str]:
        """Settings that work but not as their values suggest: said at start-up, not refused (a test or a
        deliberate probe may want them)."""
        if self.queue_capacity < self.max_batch_size:
            return [f"TSM_QUEUE_CAPACITY ({self.queue_capacity}) is below TSM_MAX_BATCH_SIZE ({self.max_batch_size}): "
                    f"a batch is taken from that queue, so none holds more than {self.queue_capacity} "
                    f"clip{'s' if self.queue_capacity > 1 else ''}"]
        return []

    def _timeouts_within_deadline(self) -> None:
        """A stage timeout at or past the request deadline never takes effect: the deadline always ends first."""
        deadline_s = self.request_deadline_ms / 1000
        consequences = {"decode_timeout_s": "a hung decoder would get the deadline's 504, not its 422",
                        "upload_timeout_s": "the deadline would always cut a slow upload first"}
        for name, consequence in consequences.items():
            value = getattr(self, name)
            if value >= deadline_s:
                raise ValueError(
                    f"{name} ({value:g} s) must be below request_deadline_ms ({self.request_deadline_ms:g} ms = "
                    f"{deadline_s:g} s), or {consequence}; lower {name} or raise request_deadline_ms")

    def content_type_allowed(self, content_type: str | None) -> bool:
        """True when ``content_type`` (parameters ignored) matches an allowed type or wildcard."""
        if not content_type:
            return False
        base = content_type.split(";", 1)[0].strip().lower()
        major = base.split("/", 1)[0]
        return any(base == allowed or allowed == f"{major}/*" for allowed in self.allowed_content_types)


# The project's TSM_ variables that are not the server's (compose's and the benchmarks'): a shell that sets them
# for those tools may start tsm-serve too, and they are no typo.
OTHER_TOOLS_VARIABLES = frozenset({"TSM_HTTP_PORT", "TSM_DEMO_RECIPE", "TSM_BENCH_CACHE", "TSM_MONITORING_BIND"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``TSM_*`` variable that is no setting (pydantic-settings ignores it, so a misspelt name
    would silently leave its default in force), with the closest setting's name when one is close."""
    names = [name.upper() for name in ServiceSettings.model_fields]
    warnings: list[str] = []
    for key in sorted(environ):
        # Setting names are matched in any case (pydantic-settings' default), so the check is too.
        rest = key.upper().removeprefix("TSM_")
        if not key.upper().startswith("TSM_") or rest in names or key.upper() in OTHER_TOOLS_VARIABLES:
            continue
        close = difflib.get_close_matches(rest, names, n=1)
        hint = f" (did you mean TSM_{close[0]}?)" if close else ""
        warnings.append(f"{key} is not a setting{hint}; it is ignored")
    return warnings
