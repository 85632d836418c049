"""Bulk CSV imports of leads: stored in PostgreSQL on upload, processed in chunks by SyncWorker.

Upload (`POST /leads/imports`): the body is spooled (at most 1 MiB in memory, the rest on
disk), its header checked, then one short transaction stores it as parts of 1 MiB, creates
the job and its outbox row. Why the database and not S3: the body reaches Lambda whole
through API Gateway anyway (10 MB cap), the file, the job and its outbox row commit
together (no orphan objects, no second store to secure and expire), and the worker reads
the file a window at a time with plain SQL.

The file is PII (names, emails, phones): each part is encrypted under the import's data key
(AES-256-GCM bound to 'lead_import_parts:<import id>/<part>:data'), and the parts are
deleted when the import ends (succeeded or cancelled; Housekeeping deletes those of imports
that ended otherwise once past their retention).

Worker: a chunk is one window of the file (IMPORT_CHUNK_BYTES, cut at a record boundary);
per chunk one transaction checks the job was not cancelled, COPYs the checked rows
(encrypted) into a staging table and inserts them with ON CONFLICT, records the rows'
errors (line and reason, never values), and moves the resume point and the job's progress.
A crash loses at most the chunk in flight; the redelivered message resumes at the last
committed chunk. When the Lambda's time runs short the worker commits its chunk together
with a continuation message for the same job and returns.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from uuid import UUID

from frontdesk.errors import InvalidInput, NotFound
from frontdesk.leads.external import check_external, insert_imported
from frontdesk.observability import logger
from frontdesk.platform import jobs
from frontdesk.platform.crypto import EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EventType, JobKind
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel

if TYPE_CHECKING:
    from frontdesk.services import Services
PART_BYTES = 1024 * 1024
COLUMNS = ("name", "email", "phone", "notes", "consent")
_ERRORS_SHOWN = 100


# ---------------------------------------------------------------- upload


def check_header(first_line: bytes) -> tuple[list[str], int]:
    """The header's column names and its length in bytes; InvalidInput when unusable."""
    end = first_line.find(b"\n")
    if end < 0:
        raise InvalidInput("the CSV needs a header line, then one line per lead")
    try:
        text = first_line[: end + 1].decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV must be UTF-8") from None
    columns = [c.strip().lower() for c in next(csv.reader([text]), [])]
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise InvalidInput(f"unknown columns: {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
    if len(set(columns)) != len(columns):
        raise InvalidInput("a column appears twice")
    if "name" not in columns or not {"email", "phone"} & set(columns):
        raise InvalidInput("the CSV needs a name column and an email or phone column")
    return columns, end + 1


class ImportAccepted(ApiModel):
    import_id: UUID
    job_id: UUID
    rows_total: int


def check_upload(file: IO[bytes]) -> tuple[list[str], int]:
    """The upload's columns and header length; InvalidInput when the header is unusable."""
    file.seek(0)
    columns, header_bytes = check_header(file.read(64 * 1024))
    file.seek(0)
    return columns, header_bytes


def part_aad(import_id: UUID, part: int) -> bytes:
    return field_aad("lead_import_parts", f"{import_id}/{part}", "data")


def store_upload(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    source: str,
    file: IO[bytes],
    size: int,
    lines: int,
) -> ImportAccepted:
    """Store a spooled upload and hand it to SyncWorker, in `uow`. `lines` counts newlines
    (the row total shown until the worker has counted the real records)."""
    columns, header_bytes = check_upload(file)
    rows_total = max(0, lines - 1)
    import_id = uuid.uuid4()
    key = cipher.data_key()
    cur = uow.cur
    job_id = uow.start_job(JobKind.LEADS_IMPORT, clinic_id, {"importId": str(import_id)})
    cur.execute(
        """INSERT INTO lead_imports (id, clinic_id, job_id, source, columns, size_bytes,
                                     part_bytes, rows_total, next_offset, dek, kms_key_id)
           VALUES (%(id)s, %(clinic)s, %(job)s, %(source)s, %(columns)s, %(size)s,
                   %(part)s, %(total)s, %(offset)s, %(dek)s, %(kms_key_id)s)""",
        {
            "id": import_id,
            "clinic": clinic_id,
            "job": job_id,
            "source": source,
            "columns": columns,
            "size": size,
            "part": PART_BYTES,
            "total": rows_total,
            "offset": header_bytes,
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
        },
    )
    with cur.copy("COPY lead_import_parts (import_id, part, data) FROM STDIN") as copy:
        part = 0
        while chunk := file.read(PART_BYTES):
            copy.write_row(
                (import_id, part, cipher.encrypt_bytes(key, chunk, part_aad(import_id, part)))
            )
            part += 1
    jobs.set_progress(
        cur,
        job_id,
        percent=0,
        message=f"0/{rows_total} rows, 0 errors",
        result=_result(import_id, rows_total, 0, 0, 0, []),
    )
    return ImportAccepted(import_id=import_id, job_id=job_id, rows_total=rows_total)


def _result(
    import_id: UUID,
    total: int,
    done: int,
    imported: int,
    error_count: int,
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "importId": str(import_id),
        "rowsTotal": total,
        "rowsDone": done,
        "rowsImported": imported,
        "errorCount": error_count,
        "errors": errors,  # the first 100, by line
    }


# ---------------------------------------------------------------- parsing a window


@dataclass
class Window:
    rows: list[tuple[int, str, str | None, str | None, str | None, bool]] = field(
        default_factory=list
    )
    errors: list[tuple[int, str]] = field(default_factory=list)
    consumed: int = 0  # bytes of complete records parsed
    lines: int = 0  # physical lines consumed

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.errors)


def parse_window(data: bytes, *, at_eof: bool, columns: list[str], first_line: int) -> Window:
    """Parse the complete records at the start of `data` (a window of the file).

    A record cut off by the window's end is left for the next window (`consumed` stops
    before it). Blank lines are skipped. Each bad record becomes (line, reason): one that
    breaks the field rules, is malformed CSV, or is not UTF-8 (only the header's encoding is
    checked on upload)."""
    window = Window()
    if not at_eof:
        cut = data.rfind(b"\n")
        if cut < 0:
            return window
        data = data[: cut + 1]
    lines = data.splitlines(keepends=True)
    position = 0
    line_no = first_line - 1
    undecodable = False  # a line of the record being read is not UTF-8

    def feed() -> Iterator[str]:
        # csv.reader asks for a record's lines as it reads it and no further, so a line that
        # is not UTF-8 marks the record it belongs to.
        nonlocal position, line_no, undecodable
        for raw in lines:
            position += len(raw)
            line_no += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                undecodable = True
                yield raw.decode("utf-8", "replace")

    reader = csv.reader(feed(), strict=True)
    index = {name: i for i, name in enumerate(columns)}
    width = len(columns)
    get = _getter(index)
    while True:
        start, start_line = position, line_no + 1
        undecodable = False
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if position >= len(data) and not at_eof:
                position, line_no = start, start_line - 1  # cut off: the next window's
                break
            window.errors.append((start_line, f"malformed CSV ({exc})"))
            continue
        if undecodable:
            window.errors.append((start_line, "the row is not UTF-8"))
            continue
        if not record or record == [""]:
            continue
        if len(record) != width:
            window.errors.append((start_line, f"expected {width} fields, found {len(record)}"))
            continue
        checked = check_external(
            get(record, "name"),
            get(record, "email"),
            get(record, "phone"),
            get(record, "notes"),
            get(record, "consent") or "",
        )
        if isinstance(checked, str):
            window.errors.append((start_line, checked))
        else:
            window.rows.append((start_line, *checked))
    window.consumed = position
    window.lines = line_no - first_line + 1
    return window


def _getter(index: dict[str, int]) -> Callable[[list[str], str], str | None]:
    def get(record: list[str], name: str) -> str | None:
        i = index.get(name)
        return None if i is None else record[i]

    return get


# ---------------------------------------------------------------- the worker


def run(
    services: Services,
    *,
    job_id: UUID,
    clinic_id: UUID,
    chunk_bytes: int,
    remaining_seconds: Callable[[], float],
    on_chunk: Callable[[int], None] | None = None,
) -> str:
    """Process an import from its resume point. Returns "succeeded", "cancelled",
    "continued" (time ran short: a continuation message was committed), "busy" (another
    worker moved the resume point) or "already_done"."""
    db = services.database
    with services.unit_of_work() as uow:
        started = jobs.start_attempt(uow.cur, job_id)
        if started is None or started["clinic_id"] != clinic_id:
            return "already_done"
        state = _state(uow.cur, job_id)
    slowest = 0.0
    window_bytes = chunk_bytes
    while True:
        began = remaining_seconds()
        data, at_eof = _read_window(db, services.cipher, state, window_bytes)
        window = parse_window(
            data, at_eof=at_eof, columns=state["columns"], first_line=state["next_line"]
        )
        if window.consumed == 0 and not at_eof:
            window_bytes *= 2  # one record longer than the window
            continue
        window_bytes = chunk_bytes
        # Stop after this chunk when another one might not fit in the time left.
        last = at_eof or remaining_seconds() < max(10.0, 3 * slowest)
        with services.unit_of_work(request_id=started["request_id"]) as uow:
            outcome = _commit_chunk(uow, services, state, window, at_eof=at_eof, last=last)
            if outcome == "continued":
                uow.send_job(JobKind.LEADS_IMPORT, job_id, clinic_id)
            elif outcome == "succeeded":
                uow.emit(
                    EventType.LEAD_IMPORT_COMPLETED,
                    {
                        "importId": str(state["id"]),
                        "clinicId": str(clinic_id),
                        "rowsImported": state["rows_imported"],
                        "errorCount": state["error_count"],
                    },
                )
        if on_chunk is not None and outcome in ("next", "continued", "succeeded"):
            on_chunk(state["chunks_done"])
        if outcome != "next":
            return outcome
        slowest = max(slowest, began - remaining_seconds())


def _state(cur: Cursor, job_id: UUID) -> dict[str, Any]:
    cur.execute(
        """SELECT id, clinic_id, job_id, source, columns, size_bytes, part_bytes, rows_total,
                  next_offset, next_line, rows_done, rows_imported, error_count, chunks_done,
                  dek
           FROM lead_imports WHERE job_id = %(job)s""",
        {"job": job_id},
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"no import for job {job_id}")
    return dict(row)


def _read_window(
    db: Database, cipher: EnvelopeCipher, state: dict[str, Any], size: int
) -> tuple[bytes, bool]:
    """`size` bytes of the file from the resume point (only the parts that hold them),
    decrypted once the reading transaction has ended. An import stored before parts were
    encrypted has no data key: its parts are the plaintext."""
    start = int(state["next_offset"])
    end = min(start + size, int(state["size_bytes"]))
    part_bytes = int(state["part_bytes"])
    if start >= end:
        return b"", True
    with transaction(db) as cur:
        cur.execute(
            """SELECT part, data FROM lead_import_parts
               WHERE import_id = %(id)s AND part BETWEEN %(first)s AND %(last)s
               ORDER BY part""",
            {"id": state["id"], "first": start // part_bytes, "last": (end - 1) // part_bytes},
        )
        parts = [(int(row["part"]), bytes(row["data"])) for row in cur]
    dek = state["dek"]
    buffer = io.BytesIO()
    for part, data in parts:
        if dek is not None:
            data = cipher.decrypt_bytes(bytes(dek), data, part_aad(state["id"], part))
        buffer.write(data)
    skip = start - (start // part_bytes) * part_bytes
    data = buffer.getvalue()[skip : skip + (end - start)]
    return data, end >= int(state["size_bytes"])


def _commit_chunk(
    uow: UnitOfWork,
    services: Services,
    state: dict[str, Any],
    window: Window,
    *,
    at_eof: bool,
    last: bool,
) -> str:
    """One chunk, one transaction: "next", "succeeded", "continued", "cancelled", "busy"."""
    cur = uow.cur
    cur.execute("SELECT status FROM jobs WHERE id = %(id)s FOR UPDATE", {"id": state["job_id"]})
    job = cur.fetchone()
    if job is None or job["status"] == "cancelled":
        forget_file(cur, state["id"])
        return "cancelled"
    if job["status"] != "running":
        return "already_done"
    cur.execute(
        "SELECT next_offset FROM lead_imports WHERE id = %(id)s FOR UPDATE", {"id": state["id"]}
    )
    row = cur.fetchone()
    if row is None or row["next_offset"] != state["next_offset"]:
        return "busy"  # another worker committed this chunk meanwhile
    imported = insert_imported(
        uow,
        services.cipher,
        services.blind_index,
        clinic_id=state["clinic_id"],
        import_id=state["id"],
        source=state["source"],
        rows=window.rows,
    )
    if window.errors:
        cur.execute(
            """INSERT INTO lead_import_errors (import_id, line, reason)
               SELECT %(id)s, line, reason FROM unnest(%(lines)s::int[], %(reasons)s::text[])
                   AS e(line, reason)
               ON CONFLICT DO NOTHING""",
            {
                "id": state["id"],
                "lines": [line for line, _ in window.errors],
                "reasons": [reason for _, reason in window.errors],
            },
        )
    state["next_offset"] += window.consumed
    state["next_line"] += window.lines
    state["rows_done"] += window.records
    state["rows_imported"] += imported
    state["error_count"] += len(window.errors)
    state["chunks_done"] += 1
    if at_eof:
        state["rows_total"] = state["rows_done"]
    cur.execute(
        """UPDATE lead_imports
           SET next_offset = %(next_offset)s, next_line = %(next_line)s,
               rows_done = %(rows_done)s, rows_imported = %(rows_imported)s,
               error_count = %(error_count)s, chunks_done = %(chunks_done)s,
               rows_total = %(rows_total)s, updated_at = now(),
               finished_at = CASE WHEN %(eof)s THEN now() END
           WHERE id = %(id)s""",
        {**state, "eof": at_eof},
    )
    cur.execute(
        """SELECT line, reason FROM lead_import_errors WHERE import_id = %(id)s
           ORDER BY line LIMIT %(limit)s""",
        {"id": state["id"], "limit": _ERRORS_SHOWN},
    )
    errors = [dict(row) for row in cur.fetchall()]
    result = _result(
        state["id"],
        state["rows_total"],
        state["rows_done"],
        state["rows_imported"],
        state["error_count"],
        errors,
    )
    if at_eof:
        forget_file(cur, state["id"])
        jobs.set_progress(cur, state["job_id"], percent=100, message=_message(state))
        jobs.finish(cur, state["job_id"], status="succeeded", result=result)
        logger.info(
            "import finished",
            extra={"import_id": str(state["id"]), "rows": state["rows_done"]},
        )
        return "succeeded"
    percent = int(99 * state["next_offset"] / max(1, state["size_bytes"]))
    jobs.set_progress(cur, state["job_id"], percent=percent, message=_message(state), result=result)
    return "continued" if last else "next"


def forget_file(cur: Cursor, import_id: UUID) -> None:
    """The uploaded file is not needed once its import has ended: it is PII at rest."""
    cur.execute("DELETE FROM lead_import_parts WHERE import_id = %(id)s", {"id": import_id})


def _message(state: dict[str, Any]) -> str:
    return (
        f"{state['rows_done']}/{state['rows_total']} rows, {state['rows_imported']} imported, "
        f"{state['error_count']} errors"
    )


def purge_finished_parts(db: Database, *, older_than_days: int, limit: int) -> int:
    """Delete up to `limit` stored parts of imports whose job ended (any way: an import that
    succeeds or is cancelled deletes its own) more than `older_than_days` ago. A dead job's
    file is kept that long so that a replay from the DLQ can still import it."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM lead_import_parts WHERE (import_id, part) IN (
                   SELECT p.import_id, p.part FROM lead_import_parts p
                   JOIN lead_imports i ON i.id = p.import_id
                   JOIN jobs j ON j.id = i.job_id
                   WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'dead')
                     AND j.finished_at < now() - make_interval(days => %(days)s)
                   LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount
