"""Pieces both layers use: process-local buffers and scoped channels, option checks,
the CRC32 host ring and the task-group helper. Nothing here talks to Redis."""
