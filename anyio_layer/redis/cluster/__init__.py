"""The Redis Cluster client: slot map, command routing and redirections, node pools."""
