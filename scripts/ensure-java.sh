#!/usr/bin/env bash
# Make sure a Java runtime (17 or later) is on the machine for the Spark engine
# (pyspark starts a JVM). When `java` is missing and we are root with apt-get,
# install Debian's openjdk-17-jre-headless; otherwise say what to do and fail.
# Usage: scripts/ensure-java.sh [command ...]  - then runs the command, if any.
set -euo pipefail

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.[0-9]*\)*.*/\1/p' | head -n 1
}

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-java: installing Java (apt-get install openjdk-17-jre-headless)" >&2
    apt-get update -qq >/dev/null
    # The JRE's post-install step needs this man directory on slim images.
    mkdir -p /usr/share/man/man1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openjdk-17-jre-headless >/dev/null
  else
    echo "ensure-java: no java found; install Java 17+ (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2
    exit 1
  fi
fi

if command -v java >/dev/null 2>&1; then
  major="$(java_major)"
  if [ -n "$major" ] && [ "$major" -lt 17 ]; then
    echo "ensure-java: java $major found; Spark 4 needs Java 17 or later" >&2
    exit 1
  fi
fi

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
