"""`{{name}}`: a jobhost handler."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import HandlerInfo, Job, JobError_Permanent, LogLevel

SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}


class Handler(exports.Handler):
    def describe(self) -> HandlerInfo:
        return HandlerInfo(names=["{{name}}"], schema=json.dumps(SCHEMA), version="0.1.0")

    # The host checked the payload against SCHEMA before calling this. Raise
    # Err(JobError_Permanent("why")) or Err(JobError_Transient(TransientError(...))).
    def handle(self, job: Job) -> str | None:
        name = json.loads(job.payload)["name"]
        if len(name) > 32:
            raise Err(JobError_Permanent("name is longer than 32 characters"))
        host.log(LogLevel.INFO, f"greeted {name}")
        return json.dumps({"greeting": f"Hello, {name}!"})
