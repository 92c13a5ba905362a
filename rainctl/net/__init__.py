"""Network transports of the ring."""
