"""Moving between rainctl and other tools' configurations (keepalived: import and export)."""
