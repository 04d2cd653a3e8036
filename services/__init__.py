"""homelab services: one package per service."""
