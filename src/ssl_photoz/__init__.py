"""ssl-photoz: self-supervised photometric redshifts for sky surveys (Hayat et al. 2021)."""

__version__ = "0.1.0"
