"""The pub/sub layer: channels_redis's PUBLISH/SUBSCRIBE channel layer, on anyio."""
