"""The labeled query's conditions written again with pandas, not SQL: an independent reference
for the query backends (DuckDB in test_query, the CasJobs emulator in test_casjobs_end_to_end)."""

from __future__ import annotations

import pandas as pd


def labeled_specobjids(
    spec: pd.DataFrame, photo: pd.DataFrame, gal: pd.DataFrame, photoz_objids
) -> list[int]:
    """specObjIDs of the spectra the paper's MGS query keeps (repeat spectra included)."""
    m = spec.merge(photo, left_on="bestObjID", right_on="objID").merge(gal, on="specObjID")
    m = m[m["objID"].isin(photoz_objids)]
    keep = (
        (m["z"] > 0)
        & (m["zWarning"] == 0)
        & (m["targetType"] == "SCIENCE")
        & (m["survey"] == "sdss")
        & (m["class"] == "GALAXY")
        & (m["primtarget"] >= 64)
        & (m["clean"] == 1)
        & (m["insideMask"] == 0)
        & (m["petroMag_r"] - m["extinction_r"] <= 17.8)
        & (m["z"] <= 0.4)
    )
    return sorted(m.loc[keep, "specObjID"])
