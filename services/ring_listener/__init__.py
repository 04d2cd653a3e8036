"""ring_listener: Ring dings and motion from three triggers → CameraEvent on homelab/camera/event/raw."""
