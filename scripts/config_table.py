"""Print the configuration keys as a Markdown table (pasted into README.md; one source of truth: config.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel  # noqa: E402

import config  # noqa: E402


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name.upper()}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, key + "__")
            continue
        default = field.get_default(call_default_factory=True)
        if hasattr(default, "model_dump"):
            default = default.model_dump()
        text = json.dumps(default, ensure_ascii=False, default=str) if not isinstance(default, str) else default
        out.append((key, text if text not in ('""', "null") else "(unset)", field.description or ""))
    return out


print("| key | default | meaning |\n|---|---|---|")
for key, default, desc in rows(config.Settings, "SMARTFLOW_"):
    print(f"| `{key}` | `{default}` | {desc} |")
