"""MigrateFunction: CloudFormation custom resource -> db/migrations (frontdesk.platform)."""

from frontdesk.platform import schema_resource

handler = schema_resource.make_handler()
