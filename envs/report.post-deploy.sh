#!/usr/bin/env bash
# Snakemake runs this once after creating the conda env (`--sdm conda`), inside the env.
# Why a script: an env file cannot name the zoommil checkout (`pip: [-e ..]` would resolve
# against the copy Snakemake makes of the env file, not against this repository). The
# workflow exports ZOOMMIL_SOURCE (workflow/rules/common.smk: the checkout its Snakefile is
# in); without it, the working directory and its parents are searched.
# Editable install, no dependencies: the env file provides them, and library edits reach the
# env the same way they reach the rules that track them (`lib=` inputs).
set -euo pipefail
src="${ZOOMMIL_SOURCE:-}"
if [ -z "$src" ] || [ ! -f "$src/pyproject.toml" ]; then
    src=""
    dir="$PWD"
    while [ "$dir" != "/" ]; do
        if grep -qs '^name = "zoommil"' "$dir/pyproject.toml"; then src="$dir"; break; fi
        dir=$(dirname "$dir")
    done
fi
if [ -z "$src" ]; then
    echo "zoommil post-deploy: cannot find the zoommil checkout; set ZOOMMIL_SOURCE=/path/to/zoommil" >&2
    exit 1
fi
python -m pip install --quiet --no-deps --no-build-isolation --editable "$src"
python -c "import zoommil, sys; print(f'zoommil {zoommil.__version__} from {zoommil.__file__} in {sys.prefix}')"
