"""LlmWorker: SQS llm queue -> one assistant reply per job, partial batch failures."""

from frontdesk.workers import llm

handler = llm.make_handler()
