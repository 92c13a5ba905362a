"""The node daemon: the composition root that runs the ring on a real clock and socket."""
