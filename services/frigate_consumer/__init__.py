"""frigate_consumer: Frigate events/reviews → CameraEvent on homelab/camera/event/raw."""
