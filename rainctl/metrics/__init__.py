"""The node's Prometheus metrics (docs/metrics.md): the token rotation histogram the driver
feeds, the exporter process that serves `/metrics` off the ring's loop, the collector that
turns the daemon's `metrics` answer into metric families, and the Grafana dashboard."""
