#!/bin/sh
# Snakemake cluster-generic cancel command; the logic lives in scheduler.py beside this file.
exec python3 "$(dirname "$0")/scheduler.py" cancel "$@"
