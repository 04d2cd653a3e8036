"""dedup: homelab/camera/event/raw → homelab/camera/event/unique, two layers, state in SQLite."""
