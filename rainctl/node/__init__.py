"""A front node's machine: the files and settings it needs before `rainctl daemon` runs.

`rainctl.node.render` renders them (the systemd unit, the sysctl.d file) from templates/;
`rainctl.node.setup` is `rainctl node setup`, which installs them idempotently.
"""
