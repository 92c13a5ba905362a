"""Back-end health checking (the node's checkers): probes, the targets the config implies
and the monitor that runs them off the token path. The agreed verdict is rainctl.core.health."""
