"""The agent tunnel's wire protocol, shared by the server (relay, ws_tunnel) and the agent client.

- `codec`: typed messages ⇄ binary frames, packing frames into WebSocket messages, body splitting.
- `flow`: per-stream credit (send and receive windows) and when to send WINDOW_UPDATE.
- `streams`: stream ids, the stream lifecycle, and restoring a stream's frame order.

Pure logic: no I/O, no asyncio, no AWS. The protocol itself is described in docs/tunnel-protocol.md.
"""
