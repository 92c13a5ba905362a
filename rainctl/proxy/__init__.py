"""The resumable HTTP/1.1 proxy (GOALS.md B2, B3; docs/proxy.md).

`resume` is the pure rule (when a broken body may go on from another back-end, RFC 9110),
`http` the pure message helpers, `server` the asyncio socket loop, `backends` the balance
and kept connections, `settings` the limits and timers, `worker` the processes.
"""
