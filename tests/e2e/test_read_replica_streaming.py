"""`make dev --replica`: a real streaming replica serves the list reads; a write is read back
from the writer at once, whatever the replica's lag."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.test_dev_runtime import DevProcess, dev_env, state_dir, wait_for  # noqa: F401

DOCTOR = {"slotMinutes": 30, "workingHours": [{"weekday": 1, "start": "09:00", "end": "12:00"}]}


@pytest.mark.slow
@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="replicates the embedded server")
def test_lists_read_the_replica_and_a_lagging_replica_never_hides_your_own_write(
    state_dir: Path,  # noqa: F811
) -> None:
    # Given make dev with a streaming replica
    dev = DevProcess(state_dir, dev_env(), "--replica")
    try:
        api, reader_url = dev.info["apiUrl"], dev.info["databaseReaderUrl"]
        staff = {"Authorization": f"Bearer {dev.info['staffToken']}"}

        def doctors() -> set[str]:
            answer = httpx.get(f"{api}/doctors", headers=staff, timeout=30)
            assert answer.status_code == 200, answer.text
            return {d["name"] for d in answer.json()["data"]}

        def add_doctor(name: str) -> dict[str, Any]:
            created = httpx.post(
                f"{api}/doctors", headers=staff, json={**DOCTOR, "name": name}, timeout=30
            )
            assert created.status_code == 201, created.text
            data: dict[str, Any] = created.json()["data"]
            return data

        # When a doctor is added, the list (read on the replica) shows it once replayed
        add_doctor("Dr. Streamed")
        wait_for("the replica to replay the doctor", lambda: "Dr. Streamed" in doctors())
        # When the replica falls behind (replay paused) and another doctor and a lead are added
        with psycopg.connect(reader_url, autocommit=True) as replica:
            replica.execute("SELECT pg_wal_replay_pause()")
            try:
                add_doctor("Dr. Behind")
                lead = httpx.post(
                    f"{api}/public/leads",
                    headers={"X-Form-Key": dev.info["formKey"]},
                    json={"name": "Ada", "email": "ada@example.com", "consent": True},
                    timeout=30,
                )
                # Then the list, read on the lagging replica, does not show the doctor yet
                assert "Dr. Behind" not in doctors()
                # And the lead just written reads back at once (reads of one item: the writer)
                read = httpx.get(
                    f"{api}/leads/{lead.json()['data']['id']}", headers=staff, timeout=30
                )
                assert read.status_code == 200 and read.json()["data"]["name"] == "Ada"
            finally:
                replica.execute("SELECT pg_wal_replay_resume()")
        # And once it catches up, the list shows it
        wait_for("the replica to catch up", lambda: "Dr. Behind" in doctors())
    finally:
        code = dev.stop()
    assert code == 0, dev.output()
    # And the replica stopped with the runtime
    assert not (state_dir / "pgdata-replica" / "postmaster.pid").exists()
