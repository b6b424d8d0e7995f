"""The queue layer: channels_redis's sorted-set channel layer, on anyio."""
