"""Models that travel: versioned, verifiable model packages a partner runs exactly as pinned.

`build_package` (sponsor) -> ``NAME-VERSION.pathstrat/``; `open_package` (every loader) verifies
the manifest and signature; `predict_package` (partner) refuses features made another way, applies
the packaged decision rule and reports the out-of-distribution check. See docs/model-sharing.md.
"""

from pathstrat.sharing.build import PACKAGE_SCHEMA, build_package, open_package
from pathstrat.sharing.manifest import PackageError, generate_keypair
from pathstrat.sharing.ood import OODModel, check_cohort, fit_ood
from pathstrat.sharing.predict import check_provenance, predict_package

__all__ = ["PACKAGE_SCHEMA", "OODModel", "PackageError", "build_package", "check_cohort",
           "check_provenance", "fit_ood", "generate_keypair", "open_package", "predict_package"]
