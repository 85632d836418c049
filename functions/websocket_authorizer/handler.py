"""WebSocketAuthorizer: $connect's REQUEST authorizer (the staff token in the query string)."""

from frontdesk.push import authorizer

handler = authorizer.make_handler()
