#!/usr/bin/env bash
# Deployment step 2: one broker user per entry of mosquitto/acl, each with a new random password.
# Writes mosquitto/passwords (hashed, mode 0600, for the broker) and the clear passwords to .env as
# MQTT_PASSWORD_<USER>=… (mode 0600, for Compose and the services), and shows them once: keep .env.
# An existing mosquitto/passwords or .env entry is kept (run it again after adding a user: only the
# new one gets a password).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto_passwd >/dev/null || { echo "mqtt-passwords: install mosquitto (apt-get install mosquitto)" >&2; exit 1; }
PW=mosquitto/passwords
ENVF=.env
touch "$PW" "$ENVF"
chmod 600 "$PW" "$ENVF"
for user in $(awk '$1 == "user" {print $2}' mosquitto/acl); do
  var="MQTT_PASSWORD_$(echo "$user" | tr 'a-z-' 'A-Z_')"
  if grep -q "^$var=" "$ENVF"; then
    continue
  fi
  secret="$(openssl rand -hex 16 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(16))')"
  mosquitto_passwd -b "$PW" "$user" "$secret"
  echo "$var=$secret" >> "$ENVF"
  echo "  $user: $secret   ($var in $ENVF)"
done
echo "mqtt-passwords: $PW holds the hashes; $ENVF holds the passwords (keep it; never commit it)."
