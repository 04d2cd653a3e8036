"""vision_notifier: two-stage triage that fails closed, three independent channels, Home Assistant."""
