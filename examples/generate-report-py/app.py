"""`generate-report`: aggregates rows by a key and reports progress as it goes.

Payload: {"rows": [{...}, ...], "group_by": "city", "metric": "sales",
          "notify": "ops@example.com" (optional)}
Output:  {"groups": {"Oslo": {"count": 2, "sum": 130.5, "min": 10, "max": 120.5,
          "mean": 65.25}, ...}, "rows": 3}
With `notify`, a follow-up `notify` job is enqueued with a summary (committed only if this
job succeeds).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    EnqueueOptions,
    HandlerInfo,
    Job,
    JobError_Permanent,
    LogLevel,
)

SCHEMA = {
    "type": "object",
    "required": ["rows", "group_by", "metric"],
    "properties": {
        "rows": {"type": "array", "items": {"type": "object"}, "maxItems": 100000},
        "group_by": {"type": "string", "minLength": 1},
        "metric": {"type": "string", "minLength": 1},
        "notify": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"},
    },
    "additionalProperties": False,
}

# Progress is reported every this many rows (and once at the end).
PROGRESS_EVERY = 1000


class Handler(exports.Handler):
    def describe(self) -> HandlerInfo:
        return HandlerInfo(names=["generate-report"], schema=json.dumps(SCHEMA), version="0.1.0")

    def handle(self, job: Job) -> str | None:
        payload = json.loads(job.payload)
        rows, key, metric = payload["rows"], payload["group_by"], payload["metric"]
        groups: dict[str, dict] = {}
        for index, row in enumerate(rows):
            value = row.get(metric)
            # bool is an int in Python; a true/false metric is a mistake in the data.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Err(JobError_Permanent(f"row {index}: `{metric}` is not a number: {value!r}"))
            group = groups.setdefault(
                str(row.get(key, "")), {"count": 0, "sum": 0, "min": value, "max": value}
            )
            group["count"] += 1
            group["sum"] += value
            group["min"] = min(group["min"], value)
            group["max"] = max(group["max"], value)
            if (index + 1) % PROGRESS_EVERY == 0:
                host.progress(index + 1, len(rows), None)
        for group in groups.values():
            group["mean"] = group["sum"] / group["count"]
        host.progress(len(rows), len(rows), "done")
        host.log(LogLevel.INFO, f"{len(rows)} rows in {len(groups)} groups by `{key}`")
        if "notify" in payload:
            summary = ", ".join(f"{name}: {g['sum']}" for name, g in sorted(groups.items()))
            host.enqueue(
                "notify",
                json.dumps(
                    {
                        "template": "Report by {{key}}: {{summary}}",
                        "to": payload["notify"],
                        "vars": {"key": key, "summary": summary},
                    }
                ),
                EnqueueOptions(delay_ms=None, unique_key=f"report-{job.id}", priority=None),
            )
        return json.dumps({"groups": groups, "rows": len(rows)})
