#!/usr/bin/env bash
# Set up everything the project needs on a Debian/Ubuntu machine, idempotently:
# system packages (QGIS, GDAL), the .venv virtual environment, Python packages.
# Usage: scripts/bootstrap.sh [dev|train]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"

system_packages="python3-qgis qgis-providers qgis python3-gdal gdal-bin python3-venv python3-pip"
if ! /usr/bin/python3 -c "import qgis.core, osgeo.gdal, ensurepip" 2>/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "QGIS and GDAL are missing; run as root or install: $system_packages" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $system_packages >/dev/null
fi

# A venv that cannot install or cannot see QGIS and GDAL (made without pip or without the system's
# packages, or by a Python since removed) is made again, its packages with it.
if [ ! -x .venv/bin/pip ] || ! .venv/bin/python -c "import qgis.core, osgeo.gdal" 2>/dev/null; then
    rm -rf .venv
    # System site packages: QGIS and GDAL bindings come from Debian, not from PyPI.
    /usr/bin/python3 -m venv --system-site-packages .venv
fi

requirements="requirements-dev.txt"
[ "$profile" = train ] && requirements="requirements-train.txt"
stamp=".venv/.installed-$profile"
if [ ! -f "$stamp" ] || [ "$requirements" -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
    touch "$stamp"
fi
