"""scheduler: script-only checks on the lab's schedules (no model tokens); output is the alert."""
