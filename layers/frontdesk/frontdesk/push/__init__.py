"""Live screens: domain events pushed to the browsers that follow them.

A browser opens the WebSocket API with its staff token (`wss://.../live?token=...`), then
subscribes to topics (`{"action": "subscribe", "topics": ["leads", "job:<id>"]}`). The
authorizer (frontdesk.push.authorizer) verifies the token at `$connect`; WebSocketFunction
(frontdesk.push.socket) records the connection and its topics (frontdesk.push.connections);
an EventBridge rule sends the events screens follow to the push queue, and the PushWorker
(frontdesk.workers.push) posts each to its clinic's followers (frontdesk.push.delivery).
"""
