"""The node's timeline of what happened and why (`rainctl events`, the move counters)."""
