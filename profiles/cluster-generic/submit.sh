#!/bin/sh
# Snakemake cluster-generic submit command; the logic lives in scheduler.py beside this file.
exec python3 "$(dirname "$0")/scheduler.py" submit "$@"
