"""Dead letters of the local runtime, from the command line (the API's /ops/dead-letters).

    python -m local.dead_letters list [--queue notifications]
    python -m local.dead_letters replay [--queue notifications] (--all | MESSAGE_ID ...)

Reads the API URL and the demo token of `make dev` (it has the operator role) from
.frontdesk/dev.json. Listing consumes nothing; replaying twice is harmless (the consumers
are idempotent).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.template import REPO

Call = Callable[[str, str, Any], tuple[int, Any]]


def http_caller(dev_json: Path) -> Call:
    """Calls the running local API as the dev runtime's demo operator."""
    info = json.loads(dev_json.read_text())
    api, token = info["apiUrl"], info["staffToken"]

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (the local API's URL from dev.json)
            api + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    return call


def run(argv: list[str], call: Call) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.dead_letters", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list dead letters with their reason")
    listing.add_argument("--queue", help="notifications, llm or sync (default: every DLQ)")
    replaying = commands.add_parser("replay", help="replay dead letters to their source queue")
    replaying.add_argument("--queue", help="notifications, llm or sync (default: every DLQ)")
    replaying.add_argument("--all", action="store_true", help="every message of the DLQ(s)")
    replaying.add_argument("ids", nargs="*", help="the message ids to replay")
    args = parser.parse_args(argv)

    if args.command == "list":
        query = f"?{urllib.parse.urlencode({'queue': args.queue})}" if args.queue else ""
        status, answer = call("GET", f"/ops/dead-letters{query}", None)
        if status != 200:
            print(f"error {status}: {answer.get('detail')}", file=sys.stderr)
            return 1
        for letter in answer["data"]:
            print(
                f"{letter['queue']:<14} {letter['messageId']}  received {letter['receiveCount']}x"
                f"  job {letter['jobId'] or '-'}  {letter['reason']}"
            )
        print(f"{len(answer['data'])} dead letter(s)")
        return 0

    if args.all == bool(args.ids):
        parser.error("replay needs --all or message ids (not both)")
    body: dict[str, Any] = {"all": True} if args.all else {"messageIds": args.ids}
    if args.queue:
        body["queue"] = args.queue
    status, answer = call("POST", "/ops/dead-letters/replay", body)
    if status != 200:
        print(f"error {status}: {answer.get('detail')}", file=sys.stderr)
        return 1
    data = answer["data"]
    print(f"replayed {len(data['replayed'])}, jobs queued again {data['jobsRequeued']}")
    for missing in data["notFound"]:
        print(f"not on the DLQ (already replayed?): {missing}")
    return 0


def main(argv: list[str] | None = None) -> None:
    dev_json = REPO / ".frontdesk" / "dev.json"
    if not dev_json.exists():
        raise SystemExit("no .frontdesk/dev.json: start the local runtime first (make dev)")
    raise SystemExit(run(sys.argv[1:] if argv is None else argv, http_caller(dev_json)))


if __name__ == "__main__":
    main()
