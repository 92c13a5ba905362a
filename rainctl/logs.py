"""The one log line format of the daemon and its helper processes (journal-friendly)."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
