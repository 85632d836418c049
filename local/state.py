"""What the local runtime keeps across restarts, so a restart (or a crash) loses nothing.

PostgreSQL keeps its rows in the state folder; moto keeps nothing when its process ends.
Two things of moto's must therefore come back the same, or the rows become unreadable:

- the KMS keys: every data key in the database is encrypted under one, and its ciphertext
  names the key's id; the key's id and material are kept and put back into moto's KMS;
- the generated secrets (the blind index key): a new value would stop finding duplicates
  of the earlier rows; the value is kept and put back.

And work in flight is re-driven: messages that waited on moto's queues when the runtime
stopped are gone, so every outbox row relayed during the previous run is relayed again at
start. Every consumer is idempotent (a finished job, a sent delivery, a stored reply do not
happen twice), so a re-driven message that had been handled costs a duplicate delivery and
nothing else, and one that had not is done now.

The state file holds key material: it is written with mode 0600 in the git-ignored state
folder, like the local JWT secret, and is for this machine's development stack only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local.template import Provisioned

log = logging.getLogger("local")


class LocalState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        self.path.write_text(json.dumps(self._data, indent=2))
        self.path.chmod(0o600)

    # ------------------------------------------------------------ KMS keys and secrets

    def keep_aws(self, stack: Provisioned, session: Any, endpoint_url: str) -> None:
        """Put back the keys and generated secrets of the previous run, or remember this
        run's (the first). Needs moto in this process (the embedded default)."""
        keys: dict[str, Any] = self._data.setdefault("kmsKeys", {})
        for logical_id in stack.resources("AWS::KMS::Key"):
            saved = keys.get(logical_id)
            if saved is None:
                keys[logical_id] = _export_key(stack, logical_id)
            else:
                _import_key(stack, logical_id, saved)
        secrets: dict[str, str] = self._data.setdefault("secrets", {})
        client = session.client("secretsmanager", endpoint_url=endpoint_url)
        for logical_id, resource in stack.resources("AWS::SecretsManager::Secret").items():
            if "GenerateSecretString" not in (resource.get("Properties") or {}):
                continue
            arn = str(stack.physical[logical_id]["Ref"])
            if logical_id in secrets:
                client.put_secret_value(SecretId=arn, SecretString=secrets[logical_id])
            else:
                secrets[logical_id] = client.get_secret_value(SecretId=arn)["SecretString"]
        self._save()

    # ------------------------------------------------------------ work in flight

    def redrive(self, database_url: str) -> int:
        """Mark the outbox rows relayed since the previous run started as unsent (the
        sweeper sends them again); remember this run's start. Returns the rows marked."""
        import psycopg

        previous = self._data.get("runStartedAt")
        started = datetime.now(UTC).isoformat()
        marked = 0
        if previous is not None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                cursor = conn.execute(
                    """UPDATE outbox SET sent_at = NULL, claimed_until = NULL
                       WHERE sent_at >= %(since)s""",
                    {"since": previous},
                )
                marked = cursor.rowcount
        self._data["runStartedAt"] = started
        self._save()
        return marked


def _backend(stack: Provisioned) -> Any:
    from moto.kms.models import kms_backends

    return kms_backends[stack.account_id][stack.region]


def _export_key(stack: Provisioned, logical_id: str) -> dict[str, str]:
    key = _backend(stack).keys[str(stack.physical[logical_id]["KeyId"])]
    return {"id": key.id, "arn": key.arn, "material": bytes(key.key_material).hex()}


def _import_key(stack: Provisioned, logical_id: str, saved: dict[str, str]) -> None:
    """The key moto just created for `logical_id` becomes the saved one: its id, ARN and
    material (its aliases move with it)."""
    backend = _backend(stack)
    created = str(stack.physical[logical_id]["KeyId"])
    if created == saved["id"]:
        return
    key = backend.keys.pop(created)
    key.id, key.arn = saved["id"], saved["arn"]
    key.key_material = bytes.fromhex(saved["material"])
    for alias in key.aliases.values():
        alias.target_key_id = key.id
    backend.keys[key.id] = key
    stack.physical[logical_id] = {"Ref": key.id, "KeyId": key.id, "Arn": key.arn}
    log.info("KMS key %s restored from the previous run", logical_id)
