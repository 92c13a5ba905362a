"""The virtual lab: user-mode-linux front nodes and network-namespace hosts (docs/lab.md).

`plan` is pure (names, addresses, MACs, init scripts); `builder` runs `ip`, `linux.uml` and
`uml_mconsole` and keeps the lab's state in a directory so that `down` ends only what `up`
started; `agent` is the status helper that runs inside a node next to `rainctl daemon` and
copies the daemon's status to a file the host reads. Test infrastructure: nothing in the
daemon imports it.
"""
