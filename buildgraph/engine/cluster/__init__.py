"""Running steps on a Ray cluster: the driver's runner (driver) and what runs on a node (node)."""
