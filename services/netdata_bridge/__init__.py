"""netdata_bridge: the Netdata parent's per-host metrics → Home Assistant sensors over MQTT."""
