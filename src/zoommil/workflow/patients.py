"""Patient ids that differ only in case: one patient for the leakage guard.

`zoommil.io.sheet.check_leakage` compares the `patient` column stripped but case-sensitive,
so ``TCGA-AB-1234`` in train and ``tcga-ab-1234`` in test (a hand-typed or lower-cased
export) passed as two patients: the leakage the check is there to refuse. Slide ids are
already unique ignoring case. This check lives apart from `zoommil.io.sheet` (in the train
closure: an edit there reruns every training job) and runs where the workflow validates
the sheet (workflow/rules/common.smk).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.io.sheet import is_missing, shown


def check_patient_case(frame: pd.DataFrame, sheet: str | Path) -> None:
    """Refuse slides of one patient, spelt in several cases, in more than one split."""
    if "patient" not in frame.columns:
        return
    patients = frame["patient"].astype(str).str.strip()
    keep = ~patients.map(is_missing)
    rows = frame.loc[keep].assign(_spelling=patients[keep], _key=patients[keep].str.casefold())
    for _, group in rows.groupby("_key", sort=True):
        spellings = sorted(set(group["_spelling"]))
        splits = sorted(set(group["split"]))
        if len(spellings) > 1 and len(splits) > 1:
            pairs = zip(group["slide_id"], group["_spelling"], group["split"], strict=True)
            listed = ", ".join(f"{shown(s)} ({shown(p)}, {split})" for s, p, split in pairs)
            raise ZoomMILError(
                f"{sheet}: patient ids {', '.join(shown(p) for p in spellings)} differ only in "
                f"case and their slides are in {len(splits)} splits ({', '.join(splits)}): "
                f"{listed}; one patient's slides must be in one split (write one spelling, "
                "or, for two patients, ids that differ in more than case)"
            )
