"""What crosses the wire: channel and group names, serializers, encryption."""
