"""Upload a CSV of leads to the local runtime and show the import's progress until it ends.

    python -m local.import_leads FILE [--source old_crm] [--state-dir .frontdesk]

Reads the API URL and the staff token from .frontdesk/dev.json (written by `make dev`).
The file is streamed (never read whole); Ctrl-C cancels the import (POST /jobs/{id}/cancel).
Columns: name, and email and/or phone; optional notes and consent (true/false, yes/no, 1/0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from local.template import REPO

TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def bar(progress: int, message: str, width: int = 30) -> str:
    filled = round(width * progress / 100)
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {progress:3d}% {message}"


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--source", default="csv_import")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".frontdesk")
    args = parser.parse_args(argv)
    info = json.loads((args.state_dir / "dev.json").read_text())
    headers = {"Authorization": f"Bearer {info['staffToken']}"}
    with httpx.Client(base_url=info["apiUrl"], headers=headers, timeout=60) as client:
        with args.file.open("rb") as file:
            answer = client.post(
                "/leads/imports",
                params={"source": args.source},
                content=iter(lambda: file.read(256 * 1024), b""),
                headers={"Content-Type": "text/csv"},
            )
        if answer.status_code != 202:
            print(f"upload refused ({answer.status_code}): {answer.text}", file=sys.stderr)
            return 1
        accepted = answer.json()["data"]
        job_id = accepted["jobId"]
        print(f"uploaded: import {accepted['importId']}, job {job_id}", file=sys.stderr)
        job: dict[str, Any] = {}
        try:
            while job.get("status") not in TERMINAL:
                time.sleep(0.3)
                job = client.get(f"/jobs/{job_id}").json()["data"]
                sys.stderr.write(bar(job["progress"], job["progress_message"] or job["status"]))
                sys.stderr.flush()
        except KeyboardInterrupt:
            client.post(f"/jobs/{job_id}/cancel")
            print("\ncancelled; the chunks already committed stay imported", file=sys.stderr)
            return 130
    print(file=sys.stderr)
    result = job.get("result") or {}
    print(json.dumps({"status": job["status"], **result}, indent=2))
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
