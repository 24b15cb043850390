"""What the engines really hold in their KV caches, learned from their KV-cache events."""
